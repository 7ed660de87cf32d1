// The Kafka export's parts that need no broker: which batches count as exported (only those
// whose every record, and every batch's before them, has a good delivery report), the message
// key, and the producer settings the configuration makes. tests/ship/test_kafka_export.py
// runs the exporter against librdkafka's mock cluster.
#include <catch2/catch.hpp>

#include <openssl/evp.h>

#include <map>
#include <memory>

#include <capnp/message.h>

#include "record/record_json.h"
#include "shipd/kafka_exporter.h"

namespace schema = flowseal::schema;
using flowseal::Config;
using flowseal::ConfigError;
using flowseal::shipd::DeliveryLedger;

namespace {

std::optional<std::uint64_t> advance(DeliveryLedger& ledger) {
  std::uint64_t batches = 0, records = 0;
  return ledger.advance(batches, records);
}

std::map<std::string, std::string> properties_of(const Config& config) {
  const auto settings = flowseal::shipd::kafka_settings(config);
  return {settings.properties.begin(), settings.properties.end()};
}

}  // namespace

TEST_CASE("a batch counts as exported only once every record of it and before it is delivered") {
  DeliveryLedger ledger;
  ledger.produced_batch(7, 2);
  ledger.produced_batch(8, 1);
  ledger.produced_batch(9, 0);  // an empty batch is delivered as soon as those before it are
  ledger.report(8, true);
  CHECK_FALSE(advance(ledger));  // 7 is not yet wholly delivered: 8 waits behind it
  ledger.report(7, true);
  CHECK_FALSE(advance(ledger));
  ledger.report(7, true);
  std::uint64_t batches = 0, records = 0;
  CHECK(ledger.advance(batches, records) == 9u);
  CHECK(batches == 3);
  CHECK(records == 3);
  CHECK(ledger.empty());
  CHECK_FALSE(ledger.failed());
}

TEST_CASE("a failed delivery report stops the position and marks the ledger failed") {
  DeliveryLedger ledger;
  ledger.produced_batch(1, 2);
  ledger.report(1, true);
  ledger.report(1, false);
  CHECK(ledger.failed());
  CHECK_FALSE(advance(ledger));
  ledger.clear();
  CHECK_FALSE(ledger.failed());
  CHECK(ledger.empty());
}

TEST_CASE(
    "reports for batches the ledger does not hold, or more than a batch's records, are ignored") {
  DeliveryLedger ledger;
  ledger.produced_batch(10, 1);
  ledger.produced_batch(12, 1);  // seqs need not be consecutive
  ledger.report(3, true);
  ledger.report(11, true);
  ledger.report(12, true);
  ledger.report(12, true);  // a second report for a one-record batch
  CHECK_FALSE(advance(ledger));
  ledger.report(10, true);
  CHECK(advance(ledger) == 12u);
}

TEST_CASE("the key is the Community ID; a summary's is its group's, source port 0") {
  std::unique_ptr<EVP_MD, decltype(&EVP_MD_free)> sha1(EVP_MD_fetch(nullptr, "SHA1", nullptr),
                                                       &EVP_MD_free);
  std::string key = "a previous record's key, longer than any key";
  const auto key_of = [&](schema::FlowEvent::Reader record) {
    flowseal::shipd::kafka_key(record, sha1.get(), 0, key);
    return key;
  };
  capnp::MallocMessageBuilder message;
  auto e = message.initRoot<schema::FlowEvent>();
  const std::uint8_t orig[4] = {10, 0, 0, 1};
  const std::uint8_t resp[4] = {10, 0, 0, 2};
  e.setOrigAddr(capnp::Data::Reader(orig, 4));
  e.setRespAddr(capnp::Data::Reader(resp, 4));
  e.setOrigPort(40000);
  e.setRespPort(443);
  e.setProto(6);
  e.setCommunityId("1:flowid");
  e.setKind(schema::EventKind::END);
  CHECK(key_of(e.asReader()) == "1:flowid");

  e.setKind(schema::EventKind::SUMMARY);
  const std::string group = key_of(e.asReader());
  CHECK(group.rfind("1:", 0) == 0);
  CHECK(group.size() == 30);
  e.setOrigPort(40001);  // another folded flow's source port: the same group, the same key
  CHECK(key_of(e.asReader()) == group);
  e.setRespPort(8443);
  CHECK(key_of(e.asReader()) != group);

  e.setKind(schema::EventKind::START);
  e.setCommunityId("");
  e.setUid(99);
  // No id: the uid text.
  CHECK(key_of(e.asReader()) == flowseal::record::uid_text(99));
}

TEST_CASE(
    "the producer is idempotent, waits for all replicas, compresses with zstd unless told "
    "otherwise, and its queue comes from the memory budget") {
  Config config;
  config.exports.kafka.brokers = "127.0.0.1:9092,127.0.0.1:9093";
  config.memory.budget_mb = 64;
  auto p = properties_of(config);
  CHECK(p["bootstrap.servers"] == "127.0.0.1:9092,127.0.0.1:9093");
  CHECK(p["enable.idempotence"] == "true");
  CHECK(p["acks"] == "all");
  CHECK(p["compression.type"] == "zstd");
  CHECK(p["compression.level"] == "1");              // zstd's fastest, unless set
  CHECK(p["queue.buffering.max.kbytes"] == "8192");  // 64 MiB / 8, not librdkafka's 1 GiB
  config.exports.kafka.queue_mb = 3;
  CHECK(properties_of(config)["queue.buffering.max.kbytes"] == "3072");
  config.exports.kafka.compression_level = 5;
  CHECK(properties_of(config)["compression.level"] == "5");
  config.exports.kafka.compression_level = -1;
  config.exports.kafka.compression = "lz4";
  CHECK(properties_of(config)["compression.type"] == "lz4");
  CHECK(properties_of(config)["compression.level"] == "-1");  // lz4's own default
  config.exports.kafka.compression = "none";
  CHECK(properties_of(config)["compression.type"] == "none");
}

TEST_CASE("no brokers is a configuration error naming the key") {
  Config config;
  try {
    flowseal::shipd::kafka_settings(config);
    FAIL("kafka_settings accepted an empty broker list");
  } catch (const ConfigError& e) {
    CHECK_THAT(e.what(), Catch::Contains("export.kafka.brokers"));
  }
}
