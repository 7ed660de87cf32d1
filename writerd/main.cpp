// flowseal-writerd: stores sealed batches in zstd-compressed segment files.
#include "writer_stage.h"

int main(int argc, char** argv) {
  return flowseal::run_stage(flowseal::StageKind::kWriterd, argc, argv,
                             flowseal::writerd::run_writerd);
}
