// flowseal-signerd: seals flow records into signed, hash-chained batches.
#include "signer_stage.h"

int main(int argc, char** argv) {
  return flowseal::run_stage(flowseal::StageKind::kSignerd, argc, argv,
                             flowseal::signerd::run_signerd);
}
