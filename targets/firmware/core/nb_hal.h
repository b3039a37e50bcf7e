/* The small hardware abstraction every board implements (targets/firmware/boards/<board>/).
 * The portable core (runtime, kernels, protocol) talks to the hardware only through this header.
 */
#ifndef NB_HAL_H
#define NB_HAL_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *board;        /* e.g. "nucleo_f767zi", matches the PlatformIO env */
    const char *cycle_source; /* "dwt", "renode-dwt" or "qemu-icount" (see DESIGN.md §3) */
    uint32_t clock_hz;        /* core clock the figures were taken at */
    /* hal_counter() ticks -> reported units: units = ticks * counter_num / counter_den */
    uint32_t counter_num, counter_den;
} nb_board_info_t;

extern const nb_board_info_t nb_board_info;

/* Clocks, caches, UART and cycle counter. Called once, first thing in main(). */
void hal_init(void);

/* Blocking UART I/O on the host link (ST-LINK VCP on the NUCLEO, UART0 on QEMU). */
void hal_uart_write(const uint8_t *data, size_t len);
uint8_t hal_uart_read_byte(void);

/* Free-running up-counter, wraps at 2^32; differences are scaled by nb_board_info. */
uint32_t hal_counter(void);

/* Elapsed time between two hal_counter() readings (start taken first) in the reported units of
 * nb_board_info.cycle_source: (end - start) * counter_num / counter_den, except where the board can
 * do better (QEMU reconstructs the exact instruction count, which the plain scaling gets wrong by
 * one now and then). Added after ABI 1 of this header (additive). */
uint32_t hal_counter_elapsed(uint32_t start, uint32_t end);

/* Never returns: park the core after a fatal error has been reported. */
void hal_halt(void) __attribute__((noreturn));

#endif /* NB_HAL_H */
