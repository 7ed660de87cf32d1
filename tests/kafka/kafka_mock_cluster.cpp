// kafka-mock-cluster: librdkafka's mock Kafka cluster (rdkafka_mock.h: the real Kafka protocol
// on loopback sockets) as a process, for the Kafka export's tests: Debian ships no Kafka
// broker, and kcat reads from this one as from any other.
//
//   kafka-mock-cluster BROKERS TOPIC PARTITIONS
//
// Prints the bootstrap servers on the first line of stdout, then obeys one command per stdin
// line, answering each with "ok" (or "error: ...") on stdout once it is done:
//   down ID | up ID    the broker with this id (1..BROKERS) stops / starts serving
//   rtt ID MS          its round-trip time
// It exits 0 at the end of stdin; a test kills it by PID.
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: kafka-mock-cluster BROKERS TOPIC PARTITIONS\n");
    return 64;
  }
  const int brokers = std::atoi(argv[1]);
  const int partitions = std::atoi(argv[3]);
  if (brokers < 1 || partitions < 1) {
    std::fprintf(stderr, "kafka-mock-cluster: BROKERS and PARTITIONS must be at least 1\n");
    return 64;
  }
  // The mock cluster needs a client instance for its bookkeeping; nothing is produced on it.
  char error[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, error, sizeof error);
  if (rk == nullptr) {
    std::fprintf(stderr, "kafka-mock-cluster: %s\n", error);
    return 70;
  }
  rd_kafka_mock_cluster_t* cluster = rd_kafka_mock_cluster_new(rk, brokers);
  if (cluster == nullptr) {
    std::fprintf(stderr, "kafka-mock-cluster: cannot create the mock cluster\n");
    return 70;
  }
  const rd_kafka_resp_err_t created =
      rd_kafka_mock_topic_create(cluster, argv[2], partitions, brokers);
  if (created != RD_KAFKA_RESP_ERR_NO_ERROR) {
    std::fprintf(stderr, "kafka-mock-cluster: topic %s: %s\n", argv[2], rd_kafka_err2str(created));
    return 70;
  }
  std::cout << rd_kafka_mock_cluster_bootstraps(cluster) << std::endl;

  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string command;
    int id = 0;
    int ms = 0;
    in >> command >> id;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (command == "down") {
      err = rd_kafka_mock_broker_set_down(cluster, id);
    } else if (command == "up") {
      err = rd_kafka_mock_broker_set_up(cluster, id);
    } else if (command == "rtt" && in >> ms) {
      err = rd_kafka_mock_broker_set_rtt(cluster, id, ms);
    } else {
      std::cout << "error: unknown command: " << line << std::endl;
      continue;
    }
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      std::cout << "error: " << rd_kafka_err2str(err) << std::endl;
    } else {
      std::cout << "ok" << std::endl;
    }
  }
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(rk);
  return 0;
}
