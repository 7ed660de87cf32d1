#include "shipd/recent_event_ids.h"

#include <catch2/catch.hpp>

#include <deque>
#include <random>
#include <set>
#include <stdexcept>
#include <utility>
#include <vector>

using flowseal::shipd::EventId;
using flowseal::shipd::RecentEventIds;

namespace {

// What RecentEventIds must behave like: the last `capacity` committed ids, in order, and the
// pending batch.
struct Model {
  std::size_t capacity;
  std::deque<std::pair<std::uint64_t, std::uint64_t>> order;
  std::set<std::pair<std::uint64_t, std::uint64_t>> committed, pending;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> pending_order;  // as they came

  bool contains(const EventId& id) const {
    const auto key = std::make_pair(id.uid, id.kind_and_number);
    return committed.count(key) != 0 || pending.count(key) != 0;
  }
  void add_pending(const EventId& id) {
    pending.insert({id.uid, id.kind_and_number});
    pending_order.push_back({id.uid, id.kind_and_number});
  }
  void commit() {
    for (const auto& key : pending_order) {
      order.push_back(key);
      committed.insert(key);
      if (order.size() > capacity) {
        committed.erase(order.front());
        order.pop_front();
      }
    }
    pending.clear();
    pending_order.clear();
  }
  void rollback() {
    pending.clear();
    pending_order.clear();
  }
};

}  // namespace

TEST_CASE("a committed id is a repeat, a rolled-back one is not") {
  RecentEventIds ids(4);
  const EventId a{7, 1}, b{7, 2}, c{8, 1};
  ids.add_pending(a);
  CHECK(ids.contains(a));  // a repeat within the batch being mapped
  ids.commit();
  CHECK(ids.contains(a));
  ids.add_pending(b);
  ids.rollback();
  CHECK_FALSE(ids.contains(b));  // sent again later: not a repeat then
  CHECK_FALSE(ids.contains(c));
  CHECK(ids.committed() == 1);
}

TEST_CASE("past the capacity the oldest committed ids are forgotten, in order") {
  RecentEventIds ids(3);
  for (std::uint64_t n = 0; n < 5; ++n) {
    ids.add_pending({n, 0});
    ids.commit();
  }
  CHECK_FALSE(ids.contains({0, 0}));
  CHECK_FALSE(ids.contains({1, 0}));
  CHECK(ids.contains({2, 0}));
  CHECK(ids.contains({3, 0}));
  CHECK(ids.contains({4, 0}));
  CHECK(ids.committed() == 3);
}

TEST_CASE("a pending batch larger than the table grows it, and it shrinks back after") {
  RecentEventIds ids(4);
  const std::size_t usual = ids.table_slots();
  for (std::uint64_t n = 0; n < 1000; ++n) ids.add_pending({n, n});
  for (std::uint64_t n = 0; n < 1000; ++n) REQUIRE(ids.contains({n, n}));
  CHECK(ids.table_slots() > usual);
  ids.commit();  // only the last 4 stay
  CHECK(ids.committed() == 4);
  CHECK(ids.contains({999, 999}));
  CHECK_FALSE(ids.contains({995, 995}));
  CHECK(ids.table_slots() == usual);
  for (std::uint64_t n = 2000; n < 3000; ++n) ids.add_pending({n, n});
  ids.rollback();
  CHECK(ids.table_slots() == usual);
  CHECK(ids.contains({999, 999}));
  CHECK_FALSE(ids.contains({2000, 2000}));
}

TEST_CASE("adding a remembered id again and rolling back keeps it remembered") {
  RecentEventIds ids(8);
  ids.add_pending({1, 1});
  ids.commit();
  ids.add_pending({1, 1});  // a caller that did not ask contains() first
  CHECK(ids.pending() == 0);
  ids.rollback();
  CHECK(ids.contains({1, 1}));
}

TEST_CASE("random batches, commits, rollbacks and repeats agree with a plain model") {
  // Few distinct uids and numbers, so probe runs collide and the backward-shift deletion is
  // exercised across the table's wrap.
  for (const std::size_t capacity : {1u, 5u, 64u, 1000u}) {
    RecentEventIds ids(capacity);
    Model model{capacity, {}, {}, {}, {}};
    std::mt19937_64 rng(capacity * 7919);
    for (int step = 0; step < 200'000; ++step) {
      const unsigned what = rng() % 100;
      if (what < 3) {
        ids.commit();
        model.commit();
      } else if (what < 4) {
        ids.rollback();
        model.rollback();
      } else {
        const EventId id{rng() % 512, rng() % 4};
        const bool expected = model.contains(id);
        REQUIRE(ids.contains(id) == expected);
        if (!expected) {
          ids.add_pending(id);
          model.add_pending(id);
        }
      }
      REQUIRE(ids.committed() == model.order.size());
    }
  }
}

TEST_CASE("the id that marks an empty slot is refused, not taken as a free slot") {
  RecentEventIds ids(8);
  CHECK_THROWS_AS(ids.add_pending({1, ~0ull}), std::invalid_argument);
  CHECK(ids.pending() == 0);
  ids.add_pending({0, 0});  // uid 0, kind 0, number 0: an id like any other
  ids.commit();
  CHECK(ids.contains({0, 0}));
  CHECK_FALSE(ids.contains({0, 1}));
}
