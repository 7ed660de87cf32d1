// `flowseal collect`: the Core side of shipping. Consumes the JetStream stream the probes'
// shipd publish to (a durable pull consumer, so several collect processes may share it and a
// restarted one resumes), checks every batch on arrival, and writes one store per probe
// stream under DIR/<key id>/<stream id>/ in the segment format, so `flowseal verify` and
// `flowseal cat` read it unchanged.
//
// Guarantees:
// - A batch is acked only once it is durable in its store (writer.fsync = batch), so a kill
//   at any moment loses nothing: what was not acked is redelivered.
// - Before anything is written the batch is decoded with the checks a segment reader makes and
//   verified as `verify` does (Merkle root over the records, signature by the key its header
//   names, then the chain: seq and prevRoot against the batch stored before it). A bad frame,
//   a bad root or signature, an unknown key (with --pubkey) or a fork is refused: logged with
//   the probe, stream and batch seq, counted, terminated at the server, never written. A gap
//   (a seq beyond the next one) is refused the same way but handed back for redelivery later,
//   since the missing batch may still come.
// - A batch the store already holds (same stream, seq and Merkle root) is a repeat: acked and
//   skipped. So a republish after JetStream's de-duplication window is harmless.
#pragma once

#include <string>

namespace flowseal::supervisor {

struct CollectOptions {
  std::string url;  // tls://HOST:PORT (nats:// only with insecure)
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  bool insecure = false;
  std::string output_dir;  // DIR: DIR/<key id>/<stream id>/seg-*.fsg
  std::string pubkey_dir;  // pinned probe keys (*.pub): any other key is refused
  std::string stream = "FLOWSEAL";
  std::string subject_prefix = "flowseal";
  std::string durable = "flowseal-collect";
  double idle_exit_s = 0;  // > 0: exit 0 once nothing arrived for this long
  bool json = false;       // print the counters as one JSON object at exit
};

// Exit codes: 0 done (idle exit or a signal), 64 usage, 69 no server, 77 the server refused
// our certificate (or we refused its), 74 a store cannot be written, 78 bad options.
int collect_command(const CollectOptions& options);

}  // namespace flowseal::supervisor
