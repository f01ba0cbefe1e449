#include "tcp_wire.h"

namespace moe::comm::wire {
namespace {

void put_u32(uint32_t v, uint8_t* out) {
  for (int i = 0; i < 4; ++i) out[i] = uint8_t(v >> (24 - 8 * i));
}
uint32_t get_u32(const uint8_t* in) {
  return uint32_t(in[0]) << 24 | uint32_t(in[1]) << 16 | uint32_t(in[2]) << 8 | in[3];
}

}  // namespace

void encode(const Header& h, uint8_t out[kHeaderBytes]) {
  put_u32(h.magic, out);
  out[4] = uint8_t(h.version >> 8);
  out[5] = uint8_t(h.version);
  out[6] = uint8_t(h.op >> 8);
  out[7] = uint8_t(h.op);
  put_u32(h.key_len, out + 8);
  put_u32(h.value_len, out + 12);
}

Header decode(const uint8_t in[kHeaderBytes]) {
  Header h;
  h.magic = get_u32(in);
  h.version = uint16_t(in[4] << 8 | in[5]);
  h.op = uint16_t(in[6] << 8 | in[7]);
  h.key_len = get_u32(in + 8);
  h.value_len = get_u32(in + 12);
  return h;
}

bool valid_request(const Header& h) {
  if (h.magic != kMagic || h.version != kVersion) return false;
  if (h.key_len > kMaxKeyBytes || h.value_len > kMaxValueBytes) return false;
  switch (h.op) {
    case kHello:
      return h.key_len <= kMaxRunIdBytes && h.value_len == 0;
    case kSet:
      return h.key_len > 0;
    case kGet:
    case kWait:
    case kCheck:
      return h.key_len > 0 && h.value_len == 0;
    case kAdd:
      return h.key_len > 0 && h.value_len == 8;
    default:
      return false;
  }
}

bool valid_reply(const Header& h) {
  if (h.magic != kMagic || h.version != kVersion || h.key_len != 0 || h.value_len > kMaxValueBytes) return false;
  return h.op == kOk || h.op == kValue || h.op == kRefused || h.op == kError;
}

void put_i64(int64_t v, uint8_t out[8]) {
  uint64_t u = uint64_t(v);
  for (int i = 0; i < 8; ++i) out[i] = uint8_t(u >> (56 - 8 * i));
}

int64_t get_i64(const uint8_t in[8]) {
  uint64_t u = 0;
  for (int i = 0; i < 8; ++i) u = u << 8 | in[i];
  return int64_t(u);
}

}  // namespace moe::comm::wire
