/* Fault handlers: report the stacked PC/LR/xPSR and the fault status registers over the UART
 * (nb_fault_report in the portable core), then park the core. Every other unexpected exception
 * takes the same path, so nothing ever hangs silently.
 */
#include <stdint.h>

#include "armv7m_regs.h"
#include "nb_hal.h"
#include "nb_protocol.h"

void nb_armv7m_fault_entry(const uint32_t *frame) __attribute__((used, noreturn));

/* Naked: pick the stack the exception frame was pushed on (EXC_RETURN bit 2) before any C code
 * touches the stack. */
__attribute__((naked)) void HardFault_Handler(void)
{
    __asm volatile(
        "tst lr, #4\n\t"
        "ite eq\n\t"
        "mrseq r0, msp\n\t"
        "mrsne r0, psp\n\t"
        "b nb_armv7m_fault_entry\n\t");
}

void NMI_Handler(void) __attribute__((alias("HardFault_Handler")));
void MemManage_Handler(void) __attribute__((alias("HardFault_Handler")));
void BusFault_Handler(void) __attribute__((alias("HardFault_Handler")));
void UsageFault_Handler(void) __attribute__((alias("HardFault_Handler")));
void Default_Handler(void) __attribute__((alias("HardFault_Handler")));

void nb_armv7m_fault_entry(const uint32_t *frame)
{
    /* exception frame: r0, r1, r2, r3, r12, lr, pc, xpsr */
    const nb_fault_info_t info = {
        .pc = frame[6],
        .lr = frame[5],
        .psr = frame[7],
        .cfsr = SCB_CFSR,
        .hfsr = SCB_HFSR,
        .mmfar = SCB_MMFAR,
        .bfar = SCB_BFAR,
    };
    nb_fault_report(&info);
    hal_halt();
}
