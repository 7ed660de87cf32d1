@0xc7b2f0a4e1d35a61;
# The records that cross flowseal's rings, and the sealed batches stored on disk.
#
#   capture --PacketBatch--> flowd --FlowEventBatch--> dedupd --FlowEventBatch--> signerd
#   signerd --SealedBatch--> writerd --> segments (one zstd frame per SealedBatch)
#
# Fields are only ever added at the end of a struct (Cap'n Proto keeps that compatible), so
# segments written by an older flowseal stay readable.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flowseal::schema");

# ---------------------------------------------------------------- capture -> flowd

struct PacketRef {
  # Where one packet's captured bytes sit inside PacketBatch.data, and what libpcap said of it.
  offset   @0 :UInt32;   # byte offset into PacketBatch.data
  capLen   @1 :UInt32;   # bytes present (after payload cut)
  wireLen  @2 :UInt32;   # bytes on the wire
  hash     @3 :UInt32;   # symmetric flow hash (same for both directions)
  tsNs     @4 :Int64;    # packet timestamp, ns since the epoch
  linkType @5 :UInt16;   # DLT_* of the interface the packet came from
}

struct PacketBatch {
  # A few hundred packets: their bytes in one blob beside a compact index, so the packet edge
  # costs one message per batch, not one per packet.
  shard      @0 :UInt16;
  firstSeq   @1 :UInt64;   # capture-wide sequence number of index[0]
  data       @2 :Data;
  index      @3 :List(PacketRef);
  samplingRate @4 :Float32 = 1.0;
}

# ---------------------------------------------------------------- flowd -> dedupd -> signerd

enum EventKind {
  start   @0;   # first packet of a flow
  update  @1;   # active timeout: the flow goes on
  end     @2;   # the flow is finished (see EndReason)
  summary @3;   # dedupd: several repeated short flows folded into one record
}

enum EndReason {
  none     @0;   # not an end event
  fin      @1;   # TCP closed with FIN in both directions
  rst      @2;   # TCP reset
  idle     @3;   # idle timeout
  active   @4;   # active timeout (kind = update)
  eviction @5;   # flow table full or memory pressure
  shutdown @6;   # end of input or stop
}

struct FlowEvent {
  # Stable event id: (uid, kind, eventNumber). A replay after a crash repeats the same id, so
  # repeats can be recognised and dropped.
  uid          @0  :UInt64;
  kind         @1  :EventKind;
  eventNumber  @2  :UInt32;
  endReason    @3  :EndReason;
  samplingRate @4  :Float32 = 1.0;

  proto        @5  :UInt8;      # IP protocol number
  origAddr     @6  :Data;       # 4 bytes (IPv4) or 16 bytes (IPv6), network order
  respAddr     @7  :Data;
  origPort     @8  :UInt16;     # ICMP: type; ICMPv6: type
  respPort     @9  :UInt16;     # ICMP: code; ICMPv6: code
  vlan         @10 :UInt16;

  firstTsNs    @11 :Int64;
  lastTsNs     @12 :Int64;

  # @13..@20 and @27..@42: the two directions' figures as records sealed in segment format 2
  # hold them (see orig/resp below for what each means). Never written any more; read only to
  # print and re-verify those records (common/record/direction.h names them by side).
  legacyOrigPkts     @13 :UInt64;
  legacyOrigIpBytes  @14 :UInt64;
  legacyOrigBytes    @15 :UInt64;
  legacyRespPkts     @16 :UInt64;
  legacyRespIpBytes  @17 :UInt64;
  legacyRespBytes    @18 :UInt64;
  legacyOrigTcpFlags @19 :UInt8;
  legacyRespTcpFlags @20 :UInt8;
  connState    @21 :Text;       # Zeek conn_state (S0, SF, REJ, ...)
  history      @22 :Text;       # Zeek history letters
  communityId  @23 :Text;       # Community ID v1

  # dedupd summaries: how many flows this record stands for (1 for an ordinary record).
  flowCount    @24 :UInt32 = 1;
  firstUid     @25 :UInt64;     # summary: uid range it folds
  lastUid      @26 :UInt64;

  legacyOrigSizeMin    @27 :UInt32;
  legacyOrigSizeMax    @28 :UInt32;
  legacyOrigSizeSumSq  @29 :UInt64;
  legacyOrigIatMinUs   @30 :UInt64;
  legacyOrigIatMaxUs   @31 :UInt64;
  legacyOrigIatSumUs   @32 :UInt64;
  legacyOrigIatSumSqUs @33 :Float64;
  legacyRespSizeMin    @34 :UInt32;
  legacyRespSizeMax    @35 :UInt32;
  legacyRespSizeSumSq  @36 :UInt64;
  legacyRespIatMinUs   @37 :UInt64;
  legacyRespIatMaxUs   @38 :UInt64;
  legacyRespIatSumUs   @39 :UInt64;
  legacyRespIatSumSqUs @40 :Float64;
  legacyOrigRexmits    @41 :UInt32;
  legacyRespRexmits    @42 :UInt32;
  # The uids of the tunnel connections this flow's packets came through, as Zeek's conn.log
  # tunnel_parents: for each packet the connection directly around it (a UDP tunnel flowseal
  # logs as a flow of its own: VXLAN, Geneve, GTP-U, Teredo, AYIYA; GRE and IP-in-IP have
  # none). A set, in order of first use, at most two (flowd keeps two per flow: uplink and
  # downlink tunnels of GTP); null for a flow never seen in a tunnel.
  tunnelParents  @43 :List(UInt64);

  # Segment format 3 on: each direction's figures, one struct for either side (both always
  # set; a record with neither is one sealed in format 2, see the legacy fields).
  orig           @44 :Direction;   # what the originator sent
  resp           @45 :Direction;   # what the responder sent
  # Zeek conn.log's missed_bytes: bytes lost in content gaps. 0: flowd tracks no gaps yet.
  missedBytes    @46 :UInt64;
  # Zeek conn.log's service: the application protocols found, comma-separated; null (unset in
  # conn.log) until flowd labels applications.
  service        @47 :Text;
}

enum Locality {
  unknown @0;   # net.local_nets is empty: conn.log leaves local_orig / local_resp unset
  remote  @1;   # the side's address is in none of net.local_nets
  local   @2;   # the side's address is in one of net.local_nets
}

struct Direction {
  # What one side of a flow sent. Sizes and inter-arrival times are kept as exact sums so
  # that mean and standard deviation derive from them (mean = sum / n, var = sumsq / n -
  # mean^2) and a dedupd summary can add several flows' figures without losing anything.
  pkts       @0  :UInt64;
  ipBytes    @1  :UInt64;    # IP bytes, headers included
  bytes      @2  :UInt64;    # payload bytes (TCP: from sequence numbers, as Zeek)
  tcpFlags   @3  :UInt8;     # OR of the TCP flags this side sent
  sizeMin    @4  :UInt32;    # IP packet sizes (as ipBytes)
  sizeMax    @5  :UInt32;
  sizeSumSq  @6  :UInt64;
  # Between this side's consecutive packets, in microseconds: n packets have n - 1 of them.
  iatMinUs   @7  :UInt64;
  iatMaxUs   @8  :UInt64;
  iatSumUs   @9  :UInt64;
  iatSumSqUs @10 :Float64;   # sum of squared inter-arrival times, microseconds squared
  # TCP segments with payload that did not advance the side's highest sequence number
  # (Zeek's retransmission count behind the history letters t and T).
  rexmits    @11 :UInt32;
  local      @12 :Locality;  # conn.log's local_orig / local_resp
}

struct FlowEventBatch {
  events @0 :List(FlowEvent);
}

# ---------------------------------------------------------------- signerd -> writerd -> disk

enum SignatureAlgorithm {
  ed25519   @0;
  ecdsaP256 @1;
  rsa4096   @2;
}

struct BatchHeader {
  # What the signature covers: the canonical Cap'n Proto encoding of this struct.
  streamId     @0 :Data;      # 16 random bytes, fixed for a stream
  seq          @1 :UInt64;    # 0, 1, 2, ... without gaps
  prevRoot     @2 :Data;      # merkleRoot of batch seq-1 (32 zero bytes for seq 0)
  merkleRoot   @3 :Data;      # RFC 6962 Merkle tree hash over the records' leaves
  recordCount  @4 :UInt32;
  firstTsNs    @5 :Int64;
  lastTsNs     @6 :Int64;
  keyId        @7 :Data;      # SHA-256 of the public key (DER SubjectPublicKeyInfo)
  algorithm    @8 :SignatureAlgorithm;
}

struct SealedBatch {
  header    @0 :BatchHeader;
  records   @1 :List(FlowEvent);   # leaf i = SHA-256(0x00 || canonical(records[i]))
  signature @2 :Data;
  leafHints @3 :Data;
  # NOT signed, an untrusted hint (common/seal/leaf_hints.h): byte 0 the width w (1..32), then
  # the first w bytes of each record's leaf hash, in record order. It lets `flowseal verify`
  # name the record behind a Merkle root mismatch; it never decides whether a batch verifies.
}

# ---------------------------------------------------------------- shipd -> the Core (gaps)

struct GapMarker {
  # A probe's signed statement that it gave up batches before shipping them (writerd's
  # retention deleted them at the disk limit, writer.retention_max_mb): the Core records the
  # loss and goes on with the chain after it instead of waiting for those batches for ever.
  # What the signature covers: "flowseal gap marker 1\n" followed by the canonical Cap'n Proto
  # encoding of this struct (the prefix keeps a marker's signature from ever standing for a
  # BatchHeader's, whose canonical encoding starts with a struct pointer).
  streamId     @0 :Data;      # 16 bytes: the stream whose batches were given up
  firstSeq     @1 :UInt64;    # the first batch seq given up
  lastSeq      @2 :UInt64;    # the last batch seq given up (>= firstSeq)
  recordCount  @3 :UInt64;    # records in those batches
  givenUpNs    @4 :Int64;     # when (the probe's clock, ns since the epoch)
  keyId        @5 :Data;      # SHA-256 of the public key (DER SubjectPublicKeyInfo)
  algorithm    @6 :SignatureAlgorithm;
  reason       @7 :Text;      # what forced it, e.g. "the disk limit (writer.retention_max_mb)"
}

struct SignedGapMarker {
  marker    @0 :GapMarker;
  signature @1 :Data;
}
