/* Reset handler shared by the Cortex-M7 boards: FPU on, vector table base, .data copy, .bss zero,
 * then main(). The vector tables themselves live with each board (their IRQ counts differ).
 * Linker symbols (both boards' scripts): __vectors_start, __data_load/__data_start/__data_end,
 * __bss_start/__bss_end, __stack_start/__stack_end.
 */
#include <stdint.h>

#include "armv7m_regs.h"
#include "nb_hal.h"

extern uint32_t __vectors_start[];
extern uint32_t __data_load[], __data_start[], __data_end[];
extern uint32_t __bss_start[], __bss_end[];

int main(void);
void Reset_Handler(void) __attribute__((noreturn));

void nb_armv7m_enable_fpu(void)
{
    /* we build hard-float: CP10/CP11 full access before the first FP instruction */
    SCB_CPACR |= SCB_CPACR_CP10_CP11_FULL;
    nb_dsb();
    nb_isb();
}

void nb_armv7m_enable_icache(void)
{
    nb_dsb();
    nb_isb();
    SCB_ICIALLU = 0u;
    nb_dsb();
    nb_isb();
    SCB_CCR |= SCB_CCR_IC;
    nb_dsb();
    nb_isb();
}

void nb_armv7m_enable_dcache(void)
{
    SCB_CSSELR = 0u; /* level 1 data cache */
    nb_dsb();
    const uint32_t ccsidr = SCB_CCSIDR;
    const uint32_t sets = ((ccsidr >> 13) & 0x7FFFu) + 1u;
    const uint32_t ways = ((ccsidr >> 3) & 0x3FFu) + 1u;
    /* invalidate every line by set/way (Cortex-M7: set at bit 5, way at bit 30) before enabling */
    for (uint32_t set = 0; set < sets; set++) {
        for (uint32_t way = 0; way < ways; way++) {
            SCB_DCISW = (set << 5) | (way << 30);
        }
    }
    nb_dsb();
    SCB_CCR |= SCB_CCR_DC;
    nb_dsb();
    nb_isb();
}

void nb_armv7m_enable_cyccnt(void)
{
    COREDEBUG_DEMCR |= COREDEBUG_DEMCR_TRCENA; /* powers the DWT */
    DWT_LAR = DWT_LAR_UNLOCK;                  /* the F7's DWT ignores writes while locked */
    DWT_CYCCNT = 0u;
    DWT_CTRL |= DWT_CTRL_CYCCNTENA;
}

void Reset_Handler(void)
{
    nb_armv7m_enable_fpu();
    SCB_VTOR = (uint32_t)(uintptr_t)__vectors_start;
    for (uint32_t *src = __data_load, *dst = __data_start; dst < __data_end;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = __bss_start; dst < __bss_end;) {
        *dst++ = 0u;
    }
    nb_dsb();
    (void)main();
    hal_halt();
}
