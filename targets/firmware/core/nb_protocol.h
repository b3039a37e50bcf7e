/* The device side of the nestbench UART protocol (NBP version 1, docs/protocol.md). */
#ifndef NB_PROTOCOL_H
#define NB_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#define NB_PROTO_VERSION 1u
#define NB_MAXLINE 255u  /* longest request line accepted, frame included, '\r' and '\n' excluded */
#define NB_MAX_RUNS 32u  /* timed runs per `infer` */
#define NB_MAX_WARMUP 1000u
#ifndef NB_MAX_LAYERS
#define NB_MAX_LAYERS 256u /* per-layer counts kept for `layers` */
#endif

#ifndef NB_BUILD_ID
#define NB_BUILD_ID "dev"
#endif

/* Registers a fault handler hands over (arch/armv7m/ extracts them from the exception frame). */
typedef struct {
    uint32_t pc, lr, psr;            /* stacked by the exception entry */
    uint32_t cfsr, hfsr, mmfar, bfar; /* fault status and address registers */
} nb_fault_info_t;

/* Emit the `! boot` event. */
void nb_protocol_boot(void);
/* Read request lines from the UART and answer them, forever. */
void nb_protocol_serve(void) __attribute__((noreturn));
/* Answer one received line (without its '\n'). */
void nb_protocol_handle_line(const char *line, size_t len);
/* Emit the `! fault` event; the caller halts afterwards. Safe to call from a fault handler. */
void nb_fault_report(const nb_fault_info_t *f);

#endif /* NB_PROTOCOL_H */
