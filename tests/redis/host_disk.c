/*
 * Test shim: the guest runtime pieces guest/programs/redis.c needs beyond what
 * the network host harness (guest/net/hosttest/host.c) provides, so the
 * server builds as a Linux program on a TAP device (with ASan/UBSan):
 *   blk_*           a raw image file given by the arg disk=PATH (none: no disk),
 *                   pread/pwrite/fdatasync; read-only with disk_ro=1
 *   crc32           zlib's CRC-32, bitwise
 *   heap_free_bytes the arg mem=BYTES (default 64 MiB): what the server may take
 * Build: see tests/redis/support.ts (buildRedisHost).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kemari.h"

static int disk_fd = -2;
static uint64_t disk_sectors_n;
static int disk_ro;

static void disk_open(void) {
  if (disk_fd != -2) return;
  disk_fd = -1;
  const char *path = arg_str("disk", 0);
  if (!path) return;
  disk_ro = arg_u64("disk_ro", 0) != 0;
  disk_fd = open(path, disk_ro ? O_RDONLY : O_RDWR);
  if (disk_fd < 0) panic("host_disk: cannot open %s", path);
  struct stat sb;
  if (fstat(disk_fd, &sb) < 0) panic("host_disk: fstat");
  disk_sectors_n = (uint64_t)sb.st_size / 512;
}

uint64_t blk_sectors(void) {
  disk_open();
  return disk_fd < 0 ? 0 : disk_sectors_n;
}

int blk_readonly(void) {
  disk_open();
  return disk_ro;
}

static int check_range(uint64_t sector, uint32_t nsect) {
  disk_open();
  if (disk_fd < 0 || nsect == 0 || sector + nsect > disk_sectors_n) return BLKIF_RSP_ERROR;
  return BLKIF_RSP_OKAY;
}

int blk_read(uint64_t sector, void *buf, uint32_t nsect) {
  if (check_range(sector, nsect) != BLKIF_RSP_OKAY) return BLKIF_RSP_ERROR;
  ssize_t n = pread(disk_fd, buf, (size_t)nsect * 512, (off_t)(sector * 512));
  return n == (ssize_t)nsect * 512 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
}

int blk_write(uint64_t sector, const void *buf, uint32_t nsect) {
  if (check_range(sector, nsect) != BLKIF_RSP_OKAY || disk_ro) return BLKIF_RSP_ERROR;
  ssize_t n = pwrite(disk_fd, buf, (size_t)nsect * 512, (off_t)(sector * 512));
  return n == (ssize_t)nsect * 512 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
}

int blk_flush(void) {
  disk_open();
  if (disk_fd < 0) return BLKIF_RSP_ERROR;
  return fdatasync(disk_fd) == 0 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
}

uint32_t crc32(uint32_t crc, const void *buf, size_t len) {
  const uint8_t *p = buf;
  crc = ~crc;
  for (size_t i = 0; i < len; i++) {
    crc ^= p[i];
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

uint64_t heap_free_bytes(void) { return arg_u64("mem", 64u << 20); }
