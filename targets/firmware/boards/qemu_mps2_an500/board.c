/* Board support for QEMU's mps2-an500 (Arm MPS2 FPGA image AN500, Cortex-M7).
 *
 * UART:    CMSDK APB UART0 at 0x40004000, polled (QEMU connects it to -serial).
 * Counter: CMSDK APB timer 0 at 0x40000000, clocked at 25 MHz, free-running from 0xFFFFFFFF down;
 *          hal_counter() returns its complement, an up-counter. Under QEMU's
 *          `-icount shift=6,align=off,sleep=off` every instruction advances virtual time by 64 ns,
 *          i.e. 1.6 timer ticks, so retired instructions = ticks * 5 / 8 (DESIGN.md §4).
 *
 * Exact counts: ticks * 5 / 8 is off by one now and then, because how many ticks N instructions
 * span depends on where in the 5-instruction / 8-tick pattern they start, and that phase depends on
 * how long the firmware polled the UART before. But the phase can be read off the counter: every 5
 * instructions the counter advances by exactly 8, and a reading's value mod 8 is one of 5 residues,
 * one per instruction phase. hal_init() finds those residues (calibration below);
 * hal_counter_elapsed() then picks the one count that matches both the tick difference (to within
 * 5/8) and the phase difference (mod 5). Without a clean calibration (other icount settings) it
 * falls back to rounding.
 */
#include <stdint.h>

#include "armv7m_regs.h"
#include "nb_hal.h"

#define UART0_BASE 0x40004000u
#define UART_DATA NB_REG32(UART0_BASE + 0x000u)
#define UART_STATE NB_REG32(UART0_BASE + 0x004u)
#define UART_CTRL NB_REG32(UART0_BASE + 0x008u)
#define UART_BAUDDIV NB_REG32(UART0_BASE + 0x010u)
#define UART_STATE_TXFULL (1u << 0)
#define UART_STATE_RXFULL (1u << 1)
#define UART_CTRL_TXEN (1u << 0)
#define UART_CTRL_RXEN (1u << 1)

#define TIMER0_BASE 0x40000000u
#define TIMER_CTRL NB_REG32(TIMER0_BASE + 0x000u)
#define TIMER_VALUE NB_REG32(TIMER0_BASE + 0x004u)
#define TIMER_RELOAD NB_REG32(TIMER0_BASE + 0x008u)
#define TIMER_CTRL_EN (1u << 0)

#define SYSCLK_HZ 25000000u
#ifndef NB_UART_BAUD
#define NB_UART_BAUD 115200u
#endif

const nb_board_info_t nb_board_info = {
    .board = "qemu_mps2_an500",
    .cycle_source = "qemu-icount",
    .clock_hz = SYSCLK_HZ,
    .counter_num = 5u, /* instructions = timer ticks * 5 / 8 at icount shift 6 */
    .counter_den = 8u,
};

/* counter value mod 8 -> instruction phase mod 5 (up to a common shift), 0xFF = never seen */
static uint8_t nb_phase_of[8];
static int nb_phase_ok;

/* Counter residues mod 8 seen by 24 readings taken every (loop length + pad) instructions. */
static uint32_t nb_sample_residues(uint32_t pad)
{
    uint32_t seen = 0;
    for (uint32_t i = 0; i < 24u; i++) {
        seen |= 1u << (hal_counter() & 7u);
        for (uint32_t j = 0; j < pad; j++) {
            __asm volatile("nop");
        }
    }
    return seen;
}

static void nb_calibrate_phase(void)
{
    /* let the timer settle: right after it is enabled its first period is special */
    for (uint32_t i = 0; i < 8u; i++) {
        (void)hal_counter();
    }
    /* five loop lengths: at least four are coprime to 5 and visit every instruction phase */
    uint32_t seen = 0;
    for (uint32_t pad = 0; pad < 5u; pad++) {
        seen |= nb_sample_residues(pad);
    }
    /* within one period the 5 readings increase by at most 7 and wrap mod 8 at most once, so the
     * residues in ascending order are the phases in order, rotated: a shift differences cancel */
    uint32_t n = 0;
    for (uint32_t r = 0; r < 8u; r++) {
        nb_phase_of[r] = ((seen >> r) & 1u) != 0u ? (uint8_t)n++ : 0xFFu;
    }
    nb_phase_ok = n == 5u;
}

void hal_init(void)
{
    /* QEMU ignores the divider's value but refuses to run the UART with one below 16 */
    UART_BAUDDIV = SYSCLK_HZ / NB_UART_BAUD;
    UART_CTRL = UART_CTRL_TXEN | UART_CTRL_RXEN;
    /* A dummy read of DATA makes QEMU re-poll the host side of the serial port. Without it, bytes
     * the host sent before RX was enabled stall: QEMU stops watching the pty while the UART cannot
     * receive, and enabling RX (a CTRL write) does not wake it up again. */
    (void)UART_DATA;

    TIMER_CTRL = 0u;
    TIMER_RELOAD = 0xFFFFFFFFu;
    TIMER_VALUE = 0xFFFFFFFFu;
    TIMER_CTRL = TIMER_CTRL_EN;
    nb_calibrate_phase();
}

void hal_uart_write(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        while (UART_STATE & UART_STATE_TXFULL) {
        }
        UART_DATA = data[i];
    }
}

uint8_t hal_uart_read_byte(void)
{
    while (!(UART_STATE & UART_STATE_RXFULL)) {
    }
    return (uint8_t)UART_DATA;
}

uint32_t hal_counter(void)
{
    return ~TIMER_VALUE;
}

uint32_t hal_counter_elapsed(uint32_t start, uint32_t end)
{
    const int64_t d5 = (int64_t)(uint32_t)(end - start) * 5; /* 8 x the estimated count */
    const uint32_t rounded = (uint32_t)((d5 + 4) / 8);
    const uint8_t p0 = nb_phase_of[start & 7u], p1 = nb_phase_of[end & 7u];
    if (!nb_phase_ok || p0 > 4u || p1 > 4u) {
        return rounded;
    }
    const uint32_t phase = (p1 + 5u - p0) % 5u;
    /* the count n has |8n - 5d| < 5 (at most two candidates) and n = phase (mod 5) */
    for (uint32_t n = rounded > 0u ? rounded - 1u : 0u; n <= rounded + 1u; n++) {
        const int64_t err = (int64_t)n * 8 - d5;
        if (err > -5 && err < 5 && n % 5u == phase) {
            return n;
        }
    }
    return rounded;
}

void hal_halt(void)
{
    for (;;) {
        __asm volatile("wfi");
    }
}
