// flowseal-dedupd: suppresses repetition between flowd and signerd, never a fact.
#include "dedup_stage.h"

int main(int argc, char** argv) {
  return flowseal::run_stage(flowseal::StageKind::kDedupd, argc, argv,
                             flowseal::dedupd::run_dedupd);
}
