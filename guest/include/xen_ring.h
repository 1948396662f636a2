/*
 * Xen PV ring structures as the kemari guest uses them (x86-64 layout).
 *
 * Written from the layout tables in the Xen 4.17 ABI brief, section 5:
 *   - the generic shared ring header (DEFINE_RING_TYPES): four u32 free-running
 *     indexes, 4 bytes of private union, 44 bytes of padding, ring[] at 64;
 *   - blkif_request (112 bytes) / blkif_response (16 bytes), 32 slots per page;
 *   - xencons_interface (3088 bytes; in[1024], out[2048], four u32 indexes).
 *
 * Every offset and size is pinned with _Static_assert below.
 */
#ifndef KEMARI_XEN_RING_H
#define KEMARI_XEN_RING_H

#include <stddef.h>
#include <stdint.h>

typedef uint32_t RING_IDX;

/* ---- Generic shared ring header (64 bytes) ---- */
struct xen_sring_header {
  RING_IDX req_prod;  /* 0   written by the frontend (the guest) */
  RING_IDX req_event; /* 4   written by the backend */
  RING_IDX rsp_prod;  /* 8   written by the backend */
  RING_IDX rsp_event; /* 12  written by the frontend */
  uint8_t pvt[4];     /* 16  private union (netif smartpoll); unused by blkif */
  uint8_t pad[44];    /* 20 */
};

/* ---- blkif ---- */
#define BLKIF_OP_READ 0
#define BLKIF_OP_WRITE 1
#define BLKIF_OP_WRITE_BARRIER 2
#define BLKIF_OP_FLUSH_DISKCACHE 3
#define BLKIF_OP_RESERVED_1 4
#define BLKIF_OP_DISCARD 5
#define BLKIF_OP_INDIRECT 6

#define BLKIF_RSP_EOPNOTSUPP (-2)
#define BLKIF_RSP_ERROR (-1)
#define BLKIF_RSP_OKAY 0

#define BLKIF_MAX_SEGMENTS_PER_REQUEST 11
#define BLKIF_SECTOR_SIZE 512u
#define BLKIF_SECTORS_PER_PAGE 8u
#define BLKIF_RING_SIZE 32u /* rounddown_pow2((4096 - 64) / 112) */

struct blkif_request_segment {
  uint32_t gref;      /* 0  KVM mode: guest page frame number (GPA >> 12) */
  uint8_t first_sect; /* 4  first 512-byte sector of the page, 0..7 */
  uint8_t last_sect;  /* 5  last sector (inclusive), first_sect..7 */
  uint16_t pad;       /* 6  implicit tail padding in the Xen header */
};

struct blkif_request {
  uint8_t operation;     /* 0  BLKIF_OP_* */
  uint8_t nr_segments;   /* 1  1..11 for READ/WRITE, 0 for FLUSH */
  uint16_t handle;       /* 2  0 */
  uint32_t pad;          /* 4  implicit padding before the u64 id */
  uint64_t id;           /* 8  echoed in the response */
  uint64_t sector_number; /* 16 start sector on the disk */
  struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST]; /* 24 */
};

struct blkif_response {
  uint64_t id;       /* 0  copied from the request */
  uint8_t operation; /* 8  copied from the request */
  uint8_t pad;       /* 9 */
  int16_t status;    /* 10 BLKIF_RSP_* */
  uint32_t pad2;     /* 12 tail padding (struct is 8-aligned) */
};

union blkif_sring_entry {
  struct blkif_request req;
  struct blkif_response rsp;
};

struct blkif_sring {
  RING_IDX req_prod;  /* 0 */
  RING_IDX req_event; /* 4 */
  RING_IDX rsp_prod;  /* 8 */
  RING_IDX rsp_event; /* 12 */
  uint8_t pvt[4];     /* 16 */
  uint8_t pad[44];    /* 20 */
  union blkif_sring_entry ring[BLKIF_RING_SIZE]; /* 64 */
};

/* ---- Console ---- */
#define XENCONS_IN_SIZE 1024u
#define XENCONS_OUT_SIZE 2048u

struct xencons_interface {
  char in[XENCONS_IN_SIZE];   /* 0     backend -> guest */
  char out[XENCONS_OUT_SIZE]; /* 1024  guest -> backend */
  RING_IDX in_cons;           /* 3072  guest */
  RING_IDX in_prod;           /* 3076  backend */
  RING_IDX out_cons;          /* 3080  backend */
  RING_IDX out_prod;          /* 3084  guest */
};

/* ---- Layout pins ---- */
_Static_assert(sizeof(struct xen_sring_header) == 64, "sring header size");
_Static_assert(offsetof(struct xen_sring_header, rsp_event) == 12, "rsp_event");
_Static_assert(sizeof(struct blkif_request_segment) == 8, "segment size");
_Static_assert(offsetof(struct blkif_request_segment, first_sect) == 4, "first_sect");
_Static_assert(offsetof(struct blkif_request_segment, last_sect) == 5, "last_sect");
_Static_assert(sizeof(struct blkif_request) == 112, "blkif_request size");
_Static_assert(offsetof(struct blkif_request, nr_segments) == 1, "nr_segments");
_Static_assert(offsetof(struct blkif_request, handle) == 2, "handle");
_Static_assert(offsetof(struct blkif_request, id) == 8, "id");
_Static_assert(offsetof(struct blkif_request, sector_number) == 16, "sector_number");
_Static_assert(offsetof(struct blkif_request, seg) == 24, "seg");
_Static_assert(sizeof(struct blkif_response) == 16, "blkif_response size");
_Static_assert(offsetof(struct blkif_response, operation) == 8, "rsp operation");
_Static_assert(offsetof(struct blkif_response, status) == 10, "rsp status");
_Static_assert(sizeof(union blkif_sring_entry) == 112, "entry size");
_Static_assert(offsetof(struct blkif_sring, ring) == 64, "ring offset");
_Static_assert(sizeof(struct blkif_sring) == 64 + 32 * 112, "blkif_sring size");
_Static_assert(sizeof(struct blkif_sring) <= 4096, "blkif ring fits one page");
_Static_assert(sizeof(struct xencons_interface) == 3088, "xencons size");
_Static_assert(offsetof(struct xencons_interface, out) == 1024, "out");
_Static_assert(offsetof(struct xencons_interface, in_cons) == 3072, "in_cons");
_Static_assert(offsetof(struct xencons_interface, in_prod) == 3076, "in_prod");
_Static_assert(offsetof(struct xencons_interface, out_cons) == 3080, "out_cons");
_Static_assert(offsetof(struct xencons_interface, out_prod) == 3084, "out_prod");

#endif
