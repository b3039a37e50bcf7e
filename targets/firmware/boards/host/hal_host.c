/* Host HAL: lets the portable core (runtime + kernels) run in a host shared library for bit-exact
 * tests against the NumPy reference. No UART; the counter is a plain clock. */
#include <stdlib.h>
#include <time.h>

#include "nb_hal.h"

const nb_board_info_t nb_board_info = {
    .board = "host",
    .cycle_source = "host-ns",
    .clock_hz = 1000000000u,
    .counter_num = 1u,
    .counter_den = 1u,
};

void hal_init(void)
{
}

void hal_uart_write(const uint8_t *data, size_t len)
{
    (void)data;
    (void)len;
}

uint8_t hal_uart_read_byte(void)
{
    return (uint8_t)'\n';
}

uint32_t hal_counter(void)
{
    /* nanoseconds from a monotonic clock, wrapping like the boards' 32-bit counters */
    struct timespec ts;
    if (timespec_get(&ts, TIME_UTC) != TIME_UTC) {
        return 0u;
    }
    return (uint32_t)((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
}

uint32_t hal_counter_elapsed(uint32_t start, uint32_t end)
{
    return end - start;
}

void hal_halt(void)
{
    abort();
}
