// The tcp store's wire format. Every message, in both directions, is a
// 16-byte header followed by key_len bytes of key and value_len bytes of value:
//
//   u32 magic "MOES" (0x4d4f4553) | u16 version (1) | u16 op | u32 key_len | u32 value_len
//
// all big-endian. Requests (client -> server), strictly one at a time:
//   HELLO 1  key = run id, no value; must come first. -> OK, or REFUSED and the server closes
//   SET   2  key, value                               -> OK, or ERROR past the run's bound
//   GET   3  key                                      -> VALUE(value), held until the key exists
//   WAIT  4  key                                      -> OK, held until the key exists
//   CHECK 5  key                                      -> VALUE(1 byte: 1 when the key exists, else 0)
//   ADD   6  key, value = i64 delta (8 bytes)         -> VALUE(i64 new value, 8 bytes), or ERROR
// An ERROR past the run's bound (tcp_server.h) is followed by the server closing.
// Replies (server -> client) have key_len 0:
//   OK 0x100 | VALUE 0x101 | REFUSED 0x102 (value: text) | ERROR 0x103 (value: text)
// Caps: key_len <= 4096 (and >= 1 outside HELLO), value_len <= 16 MiB. A
// message that breaks the format (magic, version, unknown op, caps, anything
// but a HELLO before the handshake, a request while one is pending) makes the
// server close that connection. Payloads are only ever compared and copied, never interpreted,
// except ADD's delta and the counter's decimal text.
#pragma once
#include <cstddef>
#include <cstdint>

#include "store.h"

namespace moe::comm::wire {

constexpr uint32_t kMagic = 0x4d4f4553;  // "MOES"
constexpr uint16_t kVersion = 1;
constexpr size_t kHeaderBytes = 16;

enum Op : uint16_t {
  kHello = 1,
  kSet = 2,
  kGet = 3,
  kWait = 4,
  kCheck = 5,
  kAdd = 6,
  kOk = 0x100,
  kValue = 0x101,
  kRefused = 0x102,
  kError = 0x103,
};

struct Header {
  uint32_t magic = kMagic;
  uint16_t version = kVersion;
  uint16_t op = 0;
  uint32_t key_len = 0;
  uint32_t value_len = 0;
};

void encode(const Header& h, uint8_t out[kHeaderBytes]);
Header decode(const uint8_t in[kHeaderBytes]);

// Is this header a well-formed request / reply? (magic, version, op, caps)
bool valid_request(const Header& h);
bool valid_reply(const Header& h);

void put_i64(int64_t v, uint8_t out[8]);
int64_t get_i64(const uint8_t in[8]);

}  // namespace moe::comm::wire
