/* Architectural registers of ARMv7-M (System Control Block, DWT, CoreDebug, FPU access) and the
 * intrinsics-free barriers the board code needs. Addresses from the ARMv7-M Architecture Reference
 * Manual (System Control Space at 0xE000E000); identical on every Cortex-M7.
 */
#ifndef ARMV7M_REGS_H
#define ARMV7M_REGS_H

#include <stdint.h>

#define NB_REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

/* System Control Block */
#define SCB_CPUID NB_REG32(0xE000ED00u)
#define SCB_ICSR NB_REG32(0xE000ED04u)
#define SCB_VTOR NB_REG32(0xE000ED08u)
#define SCB_AIRCR NB_REG32(0xE000ED0Cu)
#define SCB_CCR NB_REG32(0xE000ED14u)
#define SCB_SHCSR NB_REG32(0xE000ED24u)
#define SCB_CFSR NB_REG32(0xE000ED28u)  /* MMFSR | BFSR << 8 | UFSR << 16 */
#define SCB_HFSR NB_REG32(0xE000ED2Cu)
#define SCB_MMFAR NB_REG32(0xE000ED34u)
#define SCB_BFAR NB_REG32(0xE000ED38u)
#define SCB_CCSIDR NB_REG32(0xE000ED80u)
#define SCB_CSSELR NB_REG32(0xE000ED84u)
#define SCB_CPACR NB_REG32(0xE000ED88u)

#define SCB_CCR_DC (1u << 16) /* L1 data cache enable */
#define SCB_CCR_IC (1u << 17) /* L1 instruction cache enable */
#define SCB_CPACR_CP10_CP11_FULL (0xFu << 20)

/* Cache maintenance (Cortex-M7) */
#define SCB_ICIALLU NB_REG32(0xE000EF50u) /* invalidate all instruction cache */
#define SCB_DCISW NB_REG32(0xE000EF60u)   /* invalidate data cache line by set/way */

/* Debug: DEMCR.TRCENA powers the DWT; CYCCNT counts core cycles once enabled */
#define COREDEBUG_DEMCR NB_REG32(0xE000EDFCu)
#define COREDEBUG_DEMCR_TRCENA (1u << 24)
#define DWT_CTRL NB_REG32(0xE0001000u)
#define DWT_CYCCNT NB_REG32(0xE0001004u)
#define DWT_LAR NB_REG32(0xE0001FB0u) /* lock access: write DWT_LAR_UNLOCK (needed on STM32F7) */
#define DWT_CTRL_CYCCNTENA (1u << 0)
#define DWT_LAR_UNLOCK 0xC5ACCE55u

static inline void nb_dsb(void)
{
    __asm volatile("dsb 0xF" ::: "memory");
}

static inline void nb_isb(void)
{
    __asm volatile("isb 0xF" ::: "memory");
}

/* Shared start-up pieces (startup.c). */
void nb_armv7m_enable_fpu(void);
void nb_armv7m_enable_icache(void);
void nb_armv7m_enable_dcache(void);
void nb_armv7m_enable_cyccnt(void);

#endif /* ARMV7M_REGS_H */
