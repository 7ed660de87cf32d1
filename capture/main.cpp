// flowseal-capture: reads packets with libpcap and feeds the flowd shards' rings.
#include "capture_stage.h"

int main(int argc, char** argv) {
  return flowseal::run_stage(flowseal::StageKind::kCapture, argc, argv,
                             flowseal::capture::run_capture);
}
