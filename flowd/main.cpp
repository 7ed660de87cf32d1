// flowseal-flowd: assembles packets into bidirectional flows (one process per shard).
#include "flowd_stage.h"

int main(int argc, char** argv) {
  return flowseal::run_stage(flowseal::StageKind::kFlowd, argc, argv, flowseal::flowd::run_flowd);
}
