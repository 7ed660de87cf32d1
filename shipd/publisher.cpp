#include "publisher.h"

#include <charconv>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "ship/ship_message.h"

namespace flowseal::shipd {

Publisher::Publisher(PublisherSettings settings)
    : settings_(std::move(settings)), shared_(std::make_unique<Shared>()) {}

Publisher::~Publisher() { disconnect(); }

void Publisher::on_ack(jsCtx*, natsMsg* msg, jsPubAck* ack, jsPubAckErr* error, void* closure) {
  auto* shared = static_cast<Shared*>(closure);
  PublishOutcome outcome;
  const char* seq_text = nullptr;
  if (msg != nullptr && natsMsgHeader_Get(msg, ship::kHeaderSeq, &seq_text) == NATS_OK &&
      seq_text != nullptr) {
    std::from_chars(seq_text, seq_text + std::strlen(seq_text), outcome.seq);
    if (ack != nullptr) {
      outcome.acked = true;
      outcome.duplicate = ack->Duplicate;
    } else if (error != nullptr) {
      outcome.error = error->ErrText != nullptr && *error->ErrText != '\0'
                          ? std::string(error->ErrText)
                          : std::string(natsStatus_GetText(error->Err));
    }
    // Notified under the lock: disconnect()'s barrier then also waits for the notify, so
    // shared_ is never touched after the Publisher is gone.
    std::lock_guard lock(shared->mutex);
    shared->outcomes.push_back(std::move(outcome));
    shared->arrived.notify_one();
  }
  natsMsg_Destroy(msg);
}

bool Publisher::connect(ship::ConnectFailure& failure, std::string& cause) {
  disconnect();
  published_ = false;
  client_ = ship::NatsClient::connect(settings_.connect, failure, cause);
  if (!client_) return false;
  jsOptions options;
  jsOptions_Init(&options);
  options.Wait = settings_.ack_wait.count();
  // Our own limit is max_inflight; libnats' is set above it so that it never stalls us.
  options.PublishAsync.MaxPending = settings_.max_inflight + 16;
  options.PublishAsync.AckHandler = &Publisher::on_ack;
  options.PublishAsync.AckHandlerClosure = shared_.get();
  js_ = client_->jetstream(&options);
  if (js_ == nullptr) {
    failure = ship::ConnectFailure::kOther;
    cause = "cannot make a JetStream context";
    client_.reset();
    return false;
  }
  jsStreamInfo* info = nullptr;
  jsErrCode code = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&info, js_, settings_.stream.c_str(), nullptr, &code);
  if (s == NATS_NOT_FOUND || code == JSStreamNotFoundErr) {
    const std::string subjects = settings_.subject_prefix + ".>";
    const char* list[] = {subjects.c_str()};
    jsStreamConfig config;
    jsStreamConfig_Init(&config);
    config.Name = settings_.stream.c_str();
    config.Subjects = list;
    config.SubjectsLen = 1;
    config.Storage = js_FileStorage;
    s = js_AddStream(&info, js_, &config, nullptr, &code);
    if (s == NATS_OK) {
      spdlog::info("ship: created JetStream stream {} (file, subjects {})", settings_.stream,
                   subjects);
    }
  }
  if (info != nullptr) jsStreamInfo_Destroy(info);
  if (s != NATS_OK) {
    failure = ship::ConnectFailure::kOther;
    cause = fmt::format("stream {}: {}", settings_.stream, ship::nats_error(s));
    js_ = nullptr;
    client_.reset();
    return false;
  }
  return true;
}

bool Publisher::publish(const StoredFrame& frame, const std::string& public_key_hex,
                        std::string& why) {
  return send(ship::batch_subject(settings_.subject_prefix, frame.file.key_id),
              ship::message_id(frame.file.key_id, frame.file.stream_id, frame.frame.batch.seq),
              frame.bytes, frame.file.stream_id, frame.frame.batch.seq, public_key_hex, {}, why);
}

bool Publisher::publish_gap(const segment::KeyId& key, const segment::StreamId& stream,
                            std::uint64_t first_seq, std::uint64_t last_seq,
                            const std::vector<std::uint8_t>& marker,
                            const std::string& public_key_hex, std::string& why) {
  return send(ship::batch_subject(settings_.subject_prefix, key),
              ship::gap_message_id(key, stream, first_seq, last_seq), marker, stream, last_seq,
              public_key_hex, std::to_string(first_seq), why);
}

bool Publisher::send(const std::string& subject, const std::string& id,
                     std::span<const std::uint8_t> bytes, const segment::StreamId& stream_id,
                     std::uint64_t seq_number, const std::string& public_key_hex,
                     const std::string& gap_first, std::string& why) {
  natsMsg* msg = nullptr;
  natsStatus s =
      natsMsg_Create(&msg, subject.c_str(), nullptr, reinterpret_cast<const char*>(bytes.data()),
                     static_cast<int>(bytes.size()));
  const std::string seq = std::to_string(seq_number);
  const std::string stream = segment::to_hex(stream_id);
  if (s == NATS_OK) s = natsMsgHeader_Set(msg, ship::kHeaderSeq, seq.c_str());
  if (s == NATS_OK) s = natsMsgHeader_Set(msg, ship::kHeaderStream, stream.c_str());
  if (s == NATS_OK && !public_key_hex.empty()) {
    s = natsMsgHeader_Set(msg, ship::kHeaderKey, public_key_hex.c_str());
  }
  if (s == NATS_OK && !gap_first.empty()) {
    s = natsMsgHeader_Set(msg, ship::kHeaderGap, gap_first.c_str());
  }
  if (s == NATS_OK) {
    jsPubOptions options;
    jsPubOptions_Init(&options);
    options.MsgId = id.c_str();
    options.MaxWait = settings_.ack_wait.count();
    options.ExpectStream = settings_.stream.c_str();
    s = js_PublishMsgAsync(js_, &msg, &options);
    published_ = true;
  }
  natsMsg_Destroy(msg);  // no-op when libnats took it
  if (s != NATS_OK) {
    why = ship::nats_error(s);
    return false;
  }
  return true;
}

void Publisher::take_outcomes(std::vector<PublishOutcome>& out) {
  std::lock_guard lock(shared_->mutex);
  for (auto& outcome : shared_->outcomes) out.push_back(std::move(outcome));
  shared_->outcomes.clear();
}

void Publisher::wait_for_outcomes(std::chrono::milliseconds timeout) {
  std::unique_lock lock(shared_->mutex);
  shared_->arrived.wait_for(lock, timeout, [&] { return !shared_->outcomes.empty(); });
}

void Publisher::abandon_pending() {
  // libnats 3.4 crashes here on a context that never published asynchronously.
  if (js_ == nullptr || !published_) return;
  natsMsgList pending{};
  if (js_PublishAsyncGetPendingList(&pending, js_) == NATS_OK) natsMsgList_Destroy(&pending);
}

void Publisher::disconnect() {
  // Acks still pending are dropped first, so that libnats finds nothing to call on_ack for;
  // the client then closes and waits for the connection's last callback.
  abandon_pending();
  js_ = nullptr;  // owned by the client
  client_.reset();
  // An on_ack that was already running finishes its push before shared_ can go.
  std::lock_guard barrier(shared_->mutex);
}

}  // namespace flowseal::shipd
