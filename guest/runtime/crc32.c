/*
 * CRC-32 as in zlib's crc32(): IEEE 802.3 polynomial, reflected (0xEDB88320),
 * initial value and final xor 0xFFFFFFFF. crc32(0, "123456789", 9) ==
 * 0xCBF43926. Pass a previous result as crc to continue a running CRC.
 */
#include "kemari.h"

static uint32_t table[256];
static int table_ready;

static void make_table(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    table[n] = c;
  }
  table_ready = 1;
}

uint32_t crc32(uint32_t crc, const void *buf, size_t len) {
  if (!table_ready) make_table();
  const unsigned char *p = buf;
  uint32_t c = crc ^ 0xffffffffu;
  for (size_t i = 0; i < len; i++) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}
