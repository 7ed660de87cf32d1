// libFuzzer target: `flowseal verify-proof FILE` and `verify --proof EVENT_ID` input parsing
// (supervisor/proof_command.h): parse_proof on the file's text, check_proof on what parses,
// parse_event_id on the text. Bad input must be named (an error string), never crash or throw.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "proof_command.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)flowseal::supervisor::parse_event_id(text);
  std::string error;
  auto proof = flowseal::supervisor::parse_proof(text, error);
  if (!proof) {
    if (error.empty()) std::abort();  // refused without saying why
    return 0;
  }
  std::string summary;
  (void)flowseal::supervisor::check_proof(*proof, nullptr, summary);
  // What parses prints, and what it prints parses to the same text.
  const std::string printed = flowseal::supervisor::proof_text(*proof);
  std::string error2;
  auto again = flowseal::supervisor::parse_proof(printed, error2);
  if (!again) std::abort();
  if (flowseal::supervisor::proof_text(*again) != printed) std::abort();
  return 0;
}
