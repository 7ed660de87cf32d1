#include "collect_command.h"

#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <thread>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "capnp_frame.h"
#include "config.h"
#include "flowseal.capnp.h"
#include "seal/chain_verifier.h"
#include "seal/gap_marker.h"
#include "seal/keys.h"
#include "segment/reader.h"
#include "segment/shipped_position.h"
#include "segment/store.h"
#include "ship/nats_client.h"
#include "ship/ship_message.h"
#include "stage_runtime.h"

namespace flowseal::supervisor {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

inline constexpr int kExitUnavailable = 69;  // sysexits EX_UNAVAILABLE: no server
inline constexpr int kExitNoPerm = 77;       // EX_NOPERM: the TLS handshake was refused

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

struct Counters {
  std::uint64_t received = 0;
  std::uint64_t stored = 0;
  std::uint64_t records_stored = 0;
  std::uint64_t repeats = 0;
  std::uint64_t refused_bad = 0;  // frame damage, Merkle root, signature
  std::uint64_t refused_key = 0;  // unknown or mismatched key
  std::uint64_t refused_fork = 0;
  std::uint64_t refused_gap = 0;     // handed back for redelivery
  std::uint64_t store_errors = 0;    // handed back for redelivery
  std::uint64_t late_after_gap = 0;  // a batch its gap marker had already given up
  std::uint64_t gaps_recorded = 0;   // signed gap markers kept: batches the probe gave up
  std::uint64_t records_given_up = 0;
};

std::string pem_of(const std::vector<std::uint8_t>& der) {
  std::string b64(4 * ((der.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), der.data(),
                                static_cast<int>(der.size()));
  b64.resize(static_cast<std::size_t>(n));
  std::string out = "-----BEGIN PUBLIC KEY-----\n";
  for (std::size_t i = 0; i < b64.size(); i += 64) out += b64.substr(i, 64) + "\n";
  return out + "-----END PUBLIC KEY-----\n";
}

template <std::size_t N>
std::optional<std::array<std::uint8_t, N>> fixed(capnp::Data::Reader data) {
  if (data.size() != N) return std::nullopt;
  std::array<std::uint8_t, N> out{};
  std::copy(data.begin(), data.end(), out.begin());
  return out;
}

// (seq, Merkle root) of every batch of a store, from `from` on, newest file last.
void for_each_stored(const fs::path& dir,
                     const std::function<void(std::uint64_t, const seal::Digest&)>& visit) {
  for (const fs::path& file : segment::list_segments(dir)) {
    segment::SegmentReader reader(file);
    while (reader.next() == segment::SegmentReader::Next::kFrame) {
      capnp::FlatArrayMessageReader message(as_words(reader.message()), frame_reader_options());
      auto header = message.getRoot<schema::SealedBatch>().getHeader();
      if (auto root = fixed<32>(header.getMerkleRoot())) visit(header.getSeq(), *root);
    }
  }
}

// One probe stream's store and where its chain stands.
struct StreamStore {
  fs::path dir;
  std::unique_ptr<segment::SegmentStore> store;
  std::optional<std::uint64_t> next_seq;
  seal::Digest last_root{};
  // False right after a gap marker: the batch after a gap links to one the Core never got.
  bool last_root_known = true;
  std::map<std::uint64_t, seal::Digest> recent_roots;  // for repeats; older ones read back

  std::optional<seal::Digest> root_of(std::uint64_t seq) {
    if (auto it = recent_roots.find(seq); it != recent_roots.end()) return it->second;
    std::optional<seal::Digest> found;
    try {
      for_each_stored(dir, [&](std::uint64_t s, const seal::Digest& root) {
        if (s == seq) found = root;
      });
    } catch (const std::exception&) {
    }
    return found;
  }
  void remember(std::uint64_t seq, const seal::Digest& root) {
    recent_roots[seq] = root;
    if (recent_roots.size() > 4096) recent_roots.erase(recent_roots.begin());
    next_seq = seq + 1;
    last_root = root;
    last_root_known = true;
  }
  // A gap marker kept: the chain goes on after its last batch.
  void skip_to(std::uint64_t first_seq, std::uint64_t last_seq) {
    given_up.emplace_back(first_seq, last_seq);
    next_seq = last_seq + 1;
    last_root_known = false;
  }
  // The batches of the gap markers kept: one of them arriving late (its publish was stored by
  // the server while the probe, its ack lost, counted it as given up) is not a fork.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> given_up;
  bool given_up_covers(std::uint64_t seq) const {
    return std::any_of(given_up.begin(), given_up.end(), [seq](const auto& range) {
      return range.first <= seq && seq <= range.second;
    });
  }
};

enum class Verdict { kAck, kTerm, kRetry };

class Collector {
 public:
  Collector(const CollectOptions& options, std::map<seal::Digest, std::vector<std::uint8_t>> pinned)
      : options_(options), pinned_(std::move(pinned)), pinning_(!options.pubkey_dir.empty()) {}

  Verdict handle(natsMsg* msg);
  void close_all() {
    for (auto& [id, stream] : streams_) {
      const segment::IoStatus status = stream.store->close();
      if (!status.ok()) spdlog::error("collect: {}", status.what);
    }
  }
  const Counters& counters() const { return counters_; }

 private:
  StreamStore& stream_for(const seal::Digest& key, const segment::StreamId& stream,
                          const std::vector<std::uint8_t>& der);
  // The DER of `key`: pinned, or learned (from the stores, or from the message's key header
  // when it hashes to the key id). nullopt with `why` when there is none to trust.
  std::optional<std::vector<std::uint8_t>> key_der(const seal::Digest& key, const char* hint_key,
                                                   std::string& why);
  Verdict handle_gap(natsMsg* msg, const std::string& who_hint, const char* hint_key);
  Verdict refuse(std::uint64_t& counter, Verdict verdict, const std::string& who,
                 const std::string& what) {
    ++counter;
    // A gap repeats on every redelivery until the missing batch comes: logged sparingly.
    if (&counter == &counters_.refused_gap && (counter & (counter - 1)) != 0) return verdict;
    spdlog::error("collect: refused {}: {}{}", who, what,
                  verdict == Verdict::kRetry ? " (handed back for redelivery)" : " (not stored)");
    return verdict;
  }

  const CollectOptions& options_;
  std::map<seal::Digest, std::vector<std::uint8_t>> pinned_;  // key id -> DER
  bool pinning_;
  std::map<seal::Digest, std::vector<std::uint8_t>> learned_;
  std::map<std::pair<seal::Digest, segment::StreamId>, StreamStore> streams_;
  ship::FrameDecoder decoder_;
  Counters counters_;
};

StreamStore& Collector::stream_for(const seal::Digest& key, const segment::StreamId& stream,
                                   const std::vector<std::uint8_t>& der) {
  auto id = std::make_pair(key, stream);
  if (auto it = streams_.find(id); it != streams_.end()) return it->second;
  StreamStore entry;
  entry.dir = fs::path(options_.output_dir) / seal::to_hex(key) / segment::to_hex(stream);
  fs::create_directories(entry.dir / "keys");
  const fs::path pub = entry.dir / "keys" / (seal::to_hex(key) + ".pub");
  if (!fs::exists(pub)) {
    const fs::path temp = entry.dir / "keys" / ".pub.tmp";
    {
      std::FILE* f = std::fopen(temp.c_str(), "w");
      if (f == nullptr)
        throw std::runtime_error(fmt::format("collect: cannot write {}", temp.string()));
      const std::string pem = pem_of(der);
      std::fwrite(pem.data(), 1, pem.size(), f);
      std::fflush(f);
      ::fsync(fileno(f));
      std::fclose(f);
    }
    fs::rename(temp, pub);
  }
  segment::StoreOptions store_options;
  store_options.dir = entry.dir;
  store_options.writer.fsync = segment::FsyncPolicy::kBatch;
  entry.store = std::make_unique<segment::SegmentStore>(store_options);
  for (const std::string& note : entry.store->take_notes()) spdlog::warn("collect: {}", note);
  // Where the stored chain ends: the next batch must link to its root.
  for_each_stored(entry.dir,
                  [&](std::uint64_t seq, const seal::Digest& root) { entry.remember(seq, root); });
  // Gap markers kept earlier move the chain past the batches they give up.
  std::map<seal::Digest, seal::PublicKey> keys;
  keys.emplace(key, seal::PublicKey::from_der(der));
  std::vector<std::string> problems;
  for (const seal::GapMarker& marker : seal::load_gap_markers(entry.dir, keys, problems)) {
    // Kept with no batch before it (the stream's first batches were given up), or over
    // where the stored chain ends.
    if (!entry.next_seq ||
        (marker.claim.first_seq <= *entry.next_seq && *entry.next_seq <= marker.claim.last_seq)) {
      entry.skip_to(marker.claim.first_seq, marker.claim.last_seq);
    } else {
      // An older gap: a batch of it arriving late after this restart is still not a fork.
      entry.given_up.emplace_back(marker.claim.first_seq, marker.claim.last_seq);
    }
  }
  for (const std::string& what : problems) spdlog::error("collect: {}", what);
  if (entry.next_seq) {
    spdlog::info("collect: {} holds the chain up to seq {}", entry.dir.string(),
                 *entry.next_seq - 1);
  } else {
    spdlog::info("collect: new probe stream: {}", entry.dir.string());
  }
  return streams_.emplace(id, std::move(entry)).first->second;
}

std::optional<std::vector<std::uint8_t>> Collector::key_der(const seal::Digest& key,
                                                            const char* hint_key,
                                                            std::string& why) {
  if (pinning_) {
    auto it = pinned_.find(key);
    if (it == pinned_.end()) {
      why = "signed by a key not pinned in " + options_.pubkey_dir;
      return std::nullopt;
    }
    return it->second;
  }
  if (auto it = learned_.find(key); it != learned_.end()) return it->second;
  std::vector<std::uint8_t> der;
  const fs::path stored = fs::path(options_.output_dir) / seal::to_hex(key);
  std::error_code ec;
  for (const auto& s : fs::directory_iterator(stored, ec)) {
    const fs::path pub = s.path() / "keys" / (seal::to_hex(key) + ".pub");
    if (fs::exists(pub)) {
      der = seal::PublicKey::load(pub).public_der();
      break;
    }
  }
  if (der.empty()) {
    auto from_header = hint_key ? ship::from_hex(hint_key) : std::nullopt;
    if (!from_header) {
      why = "unknown key and no Flowseal-Key header (pin it with --pubkey)";
      return std::nullopt;
    }
    der = *from_header;
  }
  if (seal::sha256(der) != key) {
    why = "the public key sent does not hash to the key id the message names";
    return std::nullopt;
  }
  learned_[key] = der;
  return der;
}

// A signed gap marker: the probe gave up batches first..last before shipping them. Kept in the
// stream's store (where `verify` reads it) and the chain goes on after them; a marker for
// batches the store already holds is a repeat; one past the chain's end waits for the
// batches before it, as a batch would.
Verdict Collector::handle_gap(natsMsg* msg, const std::string& who_hint, const char* hint_key) {
  std::string who = "gap marker " + who_hint;
  const auto* data = reinterpret_cast<const std::uint8_t*>(natsMsg_GetData(msg));
  const std::span<const std::uint8_t> bytes(data,
                                            static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
  // The key id first, unverified, only to find the key; the signature decides.
  std::string why = "not a gap marker message";
  const std::optional<seal::Digest> key_id = seal::gap_marker_key_id(bytes);
  if (!key_id) return refuse(counters_.refused_bad, Verdict::kTerm, who, why);
  const auto der = key_der(*key_id, hint_key, why);
  if (!der) return refuse(counters_.refused_key, Verdict::kTerm, who, why);
  const auto marker = seal::open_gap_marker(bytes, seal::PublicKey::from_der(*der), why);
  if (!marker) return refuse(counters_.refused_bad, Verdict::kTerm, who, why);
  const seal::GapClaim& claim = marker->claim;
  who = fmt::format("gap marker of probe {} stream {} batches seq {}..{}",
                    seal::to_hex(*key_id).substr(0, 16), segment::to_hex(claim.stream_id),
                    claim.first_seq, claim.last_seq);
  StreamStore& target = stream_for(*key_id, claim.stream_id, *der);
  if (target.next_seq && claim.last_seq < *target.next_seq) {
    ++counters_.repeats;  // every batch it names is held (or was given up before)
    return Verdict::kAck;
  }
  if (target.next_seq && claim.first_seq > *target.next_seq) {
    return refuse(counters_.refused_gap, Verdict::kRetry, who,
                  fmt::format("a gap: the next batch of this stream is seq {}", *target.next_seq));
  }
  const std::string name = seal::gap_marker_file_name(claim.first_seq, claim.last_seq);
  if (!segment::write_file_atomically(
          target.dir, name,
          std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), why)) {
    return refuse(counters_.store_errors, Verdict::kRetry, who, why);
  }
  const bool partly_held = target.next_seq && claim.first_seq < *target.next_seq;
  target.skip_to(claim.first_seq, claim.last_seq);
  ++counters_.gaps_recorded;
  counters_.records_given_up += claim.records;
  // A probe counts as unshipped what its saved position had not reached: batches whose acks
  // it never saw (a stalled server that stored them) may be here already.
  spdlog::warn("collect: {}: the probe gave up {} records before shipping them ({}){}; kept as {}",
               who, claim.records, claim.reason,
               partly_held ? fmt::format(" (batches from seq {} on are held here already, so "
                                         "fewer are missing than it names)",
                                         claim.first_seq)
                           : std::string(),
               (target.dir / name).string());
  return Verdict::kAck;
}

Verdict Collector::handle(natsMsg* msg) {
  ++counters_.received;
  const char* hint_stream = nullptr;
  const char* hint_seq = nullptr;
  const char* hint_key = nullptr;
  const char* hint_gap = nullptr;
  natsMsgHeader_Get(msg, ship::kHeaderStream, &hint_stream);
  natsMsgHeader_Get(msg, ship::kHeaderSeq, &hint_seq);
  natsMsgHeader_Get(msg, ship::kHeaderKey, &hint_key);
  std::string who = fmt::format("message on {} (stream {}, batch seq {})", natsMsg_GetSubject(msg),
                                hint_stream ? hint_stream : "?", hint_seq ? hint_seq : "?");
  if (natsMsgHeader_Get(msg, ship::kHeaderGap, &hint_gap) == NATS_OK && hint_gap != nullptr) {
    try {
      return handle_gap(msg, who, hint_key);
    } catch (const fs::filesystem_error& e) {
      // The Core's own disk (the store's directory, the probe's key): not the marker's fault.
      return refuse(counters_.store_errors, Verdict::kRetry, "gap marker " + who, e.what());
    } catch (const std::exception& e) {
      return refuse(counters_.refused_bad, Verdict::kTerm, "gap marker " + who, e.what());
    }
  }
  const auto* data = reinterpret_cast<const std::uint8_t*>(natsMsg_GetData(msg));
  const std::span<const std::uint8_t> bytes(data,
                                            static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
  if (auto bad = decoder_.decode(bytes))
    return refuse(counters_.refused_bad, Verdict::kTerm, who, *bad);

  try {
    capnp::FlatArrayMessageReader message(as_words(decoder_.message()), frame_reader_options());
    auto batch = message.getRoot<schema::SealedBatch>();
    auto header = batch.getHeader();
    const auto key = fixed<32>(header.getKeyId());
    const auto stream = fixed<16>(header.getStreamId());
    const auto root = fixed<32>(header.getMerkleRoot());
    const auto prev = fixed<32>(header.getPrevRoot());
    const std::uint64_t seq = header.getSeq();
    if (!key || !stream || !root || !prev) {
      return refuse(counters_.refused_bad, Verdict::kTerm, who,
                    "batch header ids of the wrong length");
    }
    who = fmt::format("probe {} stream {} batch seq {}", seal::to_hex(*key).substr(0, 16),
                      segment::to_hex(*stream), seq);
    if (header.getSeq() != decoder_.frame().batch.seq) {
      return refuse(counters_.refused_bad, Verdict::kTerm, who,
                    fmt::format("frame header says seq {}", decoder_.frame().batch.seq));
    }
    std::string why;
    const auto der = key_der(*key, hint_key, why);
    if (!der) return refuse(counters_.refused_key, Verdict::kTerm, who, why);
    // Root, signature and key, as verify checks them.
    std::map<seal::Digest, seal::PublicKey> keys;
    keys.emplace(*key, seal::PublicKey::from_der(*der));
    seal::ChainVerifier verifier(std::move(keys));
    if (auto problem = verifier.check(batch)) {
      return refuse(counters_.refused_bad, Verdict::kTerm, who,
                    problem->record ? fmt::format("record {}: {}", *problem->record, problem->what)
                                    : problem->what);
    }
    StreamStore& target = stream_for(*key, *stream, *der);
    if (target.next_seq) {
      if (seq < *target.next_seq) {
        if (target.given_up_covers(seq)) {
          // Verified (signature, root) above, but the chain here went on past its gap marker:
          // acked and counted, not stored.
          ++counters_.late_after_gap;
          return Verdict::kAck;
        }
        const auto held = target.root_of(seq);
        if (held && *held == *root) {
          ++counters_.repeats;
          return Verdict::kAck;
        }
        return refuse(counters_.refused_fork, Verdict::kTerm, who,
                      held ? "a fork: the store holds another batch with this seq"
                           : "a batch before the stored chain's start");
      }
      if (seq > *target.next_seq) {
        return refuse(
            counters_.refused_gap, Verdict::kRetry, who,
            fmt::format("a gap: the next batch of this stream is seq {}", *target.next_seq));
      }
      if (target.last_root_known && *prev != target.last_root) {
        return refuse(counters_.refused_fork, Verdict::kTerm, who,
                      fmt::format("a fork: prevRoot does not match the root of stored batch seq {}",
                                  seq - 1));
      }
    }
    segment::BatchMeta meta = decoder_.frame().batch;
    const auto result =
        target.store->append(*stream, *key, meta, decoder_.message(), realtime_ns());
    if (result == segment::AppendResult::kStored || result == segment::AppendResult::kDuplicate) {
      target.remember(seq, *root);
      ++counters_.stored;
      counters_.records_stored += meta.record_count;
      return Verdict::kAck;
    }
    return refuse(counters_.store_errors, Verdict::kRetry, who, target.store->last_error().what);
  } catch (const kj::Exception& e) {
    return refuse(counters_.refused_bad, Verdict::kTerm, who, e.getDescription().cStr());
  }
}

std::map<seal::Digest, std::vector<std::uint8_t>> load_pinned(const std::string& dir) {
  std::map<seal::Digest, std::vector<std::uint8_t>> keys;
  if (dir.empty()) return keys;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".pub") continue;
    try {
      const seal::PublicKey key = seal::PublicKey::load(entry.path());
      keys.emplace(key.key_id(), key.public_der());
    } catch (const std::exception& e) {
      throw ConfigError(fmt::format("--pubkey: {}", e.what()));
    }
  }
  if (ec) throw ConfigError(fmt::format("--pubkey {}: {}", dir, ec.message()));
  if (keys.empty()) throw ConfigError(fmt::format("--pubkey {}: holds no *.pub key", dir));
  return keys;
}

// The connection settings the options ask for; ConfigError naming the option if they cannot
// work (a bad URL, tls:// without the three TLS files, a file that cannot be read).
ship::ConnectSettings connect_settings(const CollectOptions& options) {
  ship::ConnectSettings settings;
  settings.url = options.url;
  settings.insecure = options.insecure;
  settings.name = "flowseal-collect";
  try {
    ship::check_connect_settings(settings, "--url");
  } catch (const std::invalid_argument& e) {
    throw ConfigError(e.what());
  }
  std::string why;
  if (ship::parse_nats_url(options.url, why)->scheme == "tls") {
    if (options.tls_ca.empty() || options.tls_cert.empty() || options.tls_key.empty()) {
      throw ConfigError("--url tls://... needs --tls-ca, --tls-cert and --tls-key (mutual TLS)");
    }
    try {
      ship::read_text_file(options.tls_ca, "--tls-ca");
      ship::read_text_file(options.tls_cert, "--tls-cert");
      settings.tls.key_pem = ship::read_private_pem(options.tls_key, "--tls-key");
    } catch (const std::runtime_error& e) {
      throw ConfigError(e.what());
    }
    settings.tls.ca_file = options.tls_ca;
    settings.tls.cert_file = options.tls_cert;
  }
  return settings;
}

// A JetStream request that a Core in the middle of an election answers late or not at all (a
// cluster node just died: the stream's or the consumer's group elects a new leader): worth
// asking again rather than exiting 69.
bool transient(natsStatus s, jsErrCode code) {
  return s == NATS_TIMEOUT || s == NATS_NO_RESPONDERS || code == JSClusterNotAvailErr ||
         code == JSClusterNoPeersErr;
}

// Binds to the stream, or creates it as shipd would (collect may start first). False (logged)
// if neither works; `retry` says the failure may pass (transient()).
bool bind_stream(jsCtx* js, const CollectOptions& options, bool& retry) {
  jsStreamInfo* info = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&info, js, options.stream.c_str(), nullptr, &code);
  if (s == NATS_NOT_FOUND || code == JSStreamNotFoundErr) {
    const std::string subjects = options.subject_prefix + ".>";
    const char* list[] = {subjects.c_str()};
    jsStreamConfig config;
    jsStreamConfig_Init(&config);
    config.Name = options.stream.c_str();
    config.Subjects = list;
    config.SubjectsLen = 1;
    config.Storage = js_FileStorage;
    s = js_AddStream(&info, js, &config, nullptr, &code);
  }
  if (info != nullptr) jsStreamInfo_Destroy(info);
  if (s != NATS_OK) {
    retry = transient(s, code);
    spdlog::error("collect: stream {}: {}", options.stream, ship::nats_error(s));
    return false;
  }
  return true;
}

// The durable pull consumer of every probe's batches; nullptr (logged) if the server refuses;
// `retry` says the failure may pass (transient()).
natsSubscription* subscribe(jsCtx* js, const CollectOptions& options, bool& retry) {
  const std::string filter = options.subject_prefix + ".*.batches";
  jsSubOptions sub_options;
  jsSubOptions_Init(&sub_options);
  sub_options.Stream = options.stream.c_str();
  sub_options.Config.AckPolicy = js_AckExplicit;
  // ns: a batch fetched but not acked this long (its collect was killed) is redelivered.
  sub_options.Config.AckWait = 10'000'000'000LL;
  sub_options.Config.MaxAckPending = 4096;
  natsSubscription* sub = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  const natsStatus s = js_PullSubscribe(&sub, js, filter.c_str(), options.durable.c_str(), nullptr,
                                        &sub_options, &code);
  if (s != NATS_OK) {
    retry = transient(s, code);
    spdlog::error("collect: consumer {} on {}: {}", options.durable, filter, ship::nats_error(s));
    return nullptr;
  }
  spdlog::info("collect: consuming {} of stream {} as durable {} into {}", filter, options.stream,
               options.durable, options.output_dir);
  return sub;
}

// bind_stream() and subscribe(), asked again with backoff for up to kSetupRetry while the
// failure is transient (measured: creating the durable consumer of a three-replica stream
// timed out once, 5 s after its leader node was SIGKILLed, and collect exited 69).
natsSubscription* bind_and_subscribe(jsCtx* js, const CollectOptions& options) {
  constexpr auto kSetupRetry = std::chrono::seconds(60);
  const Clock::time_point give_up = Clock::now() + kSetupRetry;
  std::chrono::milliseconds backoff(250);
  for (;;) {
    bool retry = false;
    if (bind_stream(js, options, retry)) {
      if (natsSubscription* sub = subscribe(js, options, retry)) return sub;
    }
    if (!retry || g_stop || Clock::now() + backoff > give_up) return nullptr;
    spdlog::warn("collect: the Core may be electing a leader: asking again in {} ms",
                 backoff.count());
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
  }
}

// True if the consumer has nothing pending, not even messages a killed predecessor fetched
// and never acked (redelivered after AckWait).
bool caught_up(jsCtx* js, const CollectOptions& options) {
  jsConsumerInfo* consumer = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  const natsStatus s = js_GetConsumerInfo(&consumer, js, options.stream.c_str(),
                                          options.durable.c_str(), nullptr, &code);
  if (s != NATS_OK) {
    spdlog::warn("collect: consumer info: {}", ship::nats_error(s));
    return false;
  }
  const bool done = consumer->NumPending == 0 && consumer->NumAckPending == 0;
  spdlog::debug("collect: consumer: {} pending, {} unacked", consumer->NumPending,
                consumer->NumAckPending);
  jsConsumerInfo_Destroy(consumer);
  return done;
}

// Fetches and handles batches until SIGINT/SIGTERM, or with --idle-exit until nothing arrived
// for that long and the consumer is caught up.
void consume(jsCtx* js, natsSubscription* sub, Collector& collector,
             const CollectOptions& options) {
  Clock::time_point last_message = Clock::now();
  while (!g_stop) {
    natsMsgList list{};
    jsErrCode code = static_cast<jsErrCode>(0);
    const natsStatus s = natsSubscription_Fetch(&list, sub, 64, 500, &code);
    if (s == NATS_OK) {
      for (int i = 0; i < list.Count; ++i) {
        natsMsg* msg = list.Msgs[i];
        switch (collector.handle(msg)) {
          case Verdict::kAck: natsMsg_Ack(msg, nullptr); break;
          case Verdict::kTerm: natsMsg_Term(msg, nullptr); break;
          case Verdict::kRetry: natsMsg_NakWithDelay(msg, 1000, nullptr); break;
        }
      }
      if (list.Count > 0) last_message = Clock::now();
      natsMsgList_Destroy(&list);
    } else if (s != NATS_TIMEOUT) {
      // The server is away (libnats reconnects meanwhile): wait a little and fetch again.
      natsMsgList_Destroy(&list);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    if (options.idle_exit_s > 0 &&
        Clock::now() - last_message > std::chrono::duration<double>(options.idle_exit_s) &&
        caught_up(js, options)) {
      break;
    }
  }
}

// The closing counts: one log line, and with --json one JSON object on stdout.
void report(const Counters& c, bool json) {
  spdlog::info(
      "collect: {} messages: {} batches ({} records) stored, {} repeats skipped, refused: "
      "{} bad, {} key, {} fork, {} gap; {} store errors; {} gap markers kept ({} records the "
      "probes gave up, {} batches arrived after their gap marker)",
      c.received, c.stored, c.records_stored, c.repeats, c.refused_bad, c.refused_key,
      c.refused_fork, c.refused_gap, c.store_errors, c.gaps_recorded, c.records_given_up,
      c.late_after_gap);
  if (json) {
    fmt::print(
        "{{\"received\": {}, \"stored\": {}, \"records_stored\": {}, \"repeats\": {}, "
        "\"refused_bad\": {}, \"refused_key\": {}, \"refused_fork\": {}, "
        "\"refused_gap\": {}, \"store_errors\": {}, \"gaps_recorded\": {}, "
        "\"records_given_up\": {}, \"late_after_gap\": {}}}\n",
        c.received, c.stored, c.records_stored, c.repeats, c.refused_bad, c.refused_key,
        c.refused_fork, c.refused_gap, c.store_errors, c.gaps_recorded, c.records_given_up,
        c.late_after_gap);
  }
}

}  // namespace

int collect_command(const CollectOptions& options) {
  const ship::ConnectSettings settings = connect_settings(options);
  Collector collector(options, load_pinned(options.pubkey_dir));
  fs::create_directories(options.output_dir);

  ship::ConnectFailure failure = ship::ConnectFailure::kNone;
  std::string cause;
  auto client = ship::NatsClient::connect(settings, failure, cause);
  if (!client) {
    spdlog::error("collect: cannot connect to {}: {}: {}", options.url, ship::to_string(failure),
                  cause);
    return failure == ship::ConnectFailure::kTlsRefused ? kExitNoPerm : kExitUnavailable;
  }
  jsCtx* js = client->jetstream();
  if (js == nullptr) {
    spdlog::error("collect: no JetStream context");
    return kExitUnavailable;
  }
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  natsSubscription* sub = bind_and_subscribe(js, options);
  if (sub == nullptr) return kExitUnavailable;
  consume(js, sub, collector, options);
  collector.close_all();
  natsSubscription_Destroy(sub);
  report(collector.counters(), options.json);
  return exit_code::kOk;
}

}  // namespace flowseal::supervisor
