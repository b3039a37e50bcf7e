/* Board support for the NUCLEO-F767ZI (STM32F767ZI, Cortex-M7).
 *
 * Clock:   216 MHz SYSCLK from the 8 MHz MCO of the on-board ST-LINK (HSE bypass) through the main
 *          PLL (M=4 -> 2 MHz, N=216 -> 432 MHz VCO, P=2 -> 216 MHz, Q=9 -> 48 MHz). If the MCO is
 *          not there (solder bridges changed) HSI 16 MHz feeds the PLL instead (M=8), same result.
 *          Voltage scale 1 + over-drive, 7 flash wait states, ART accelerator + prefetch, I/D caches.
 *          AHB 216 MHz, APB1 54 MHz (/4), APB2 108 MHz (/2).
 * UART:    USART3 on PD8 (TX) / PD9 (RX), AF7: the ST-LINK virtual COM port. 115200 8N1 by default
 *          (-DNB_UART_BAUD=...), kernel clock = APB1.
 * Counter: DWT CYCCNT (core cycles), DEMCR.TRCENA set and the DWT lock access register unlocked.
 */
#include <stdint.h>

#include "nb_hal.h"
#include "stm32f767_regs.h"

/* Kept as separate functions (noinline): their symbols show in the ELF and the map file. */
void nb_board_clock_init(void);
void nb_board_uart_init(void);
void nb_board_counter_init(void);

#define SYSCLK_HZ 216000000u
#define PCLK1_HZ (SYSCLK_HZ / 4u)
#ifndef NB_UART_BAUD
#define NB_UART_BAUD 115200u
#endif
#define NB_WAIT_LOOPS 2000000u /* bound on every ready-flag wait (~tens of ms at 16 MHz) */

const nb_board_info_t nb_board_info = {
    .board = "nucleo_f767zi",
    .cycle_source = "dwt",
    .clock_hz = SYSCLK_HZ,
    .counter_num = 1u,
    .counter_den = 1u,
};

/* Wait until (reg & mask) == want; returns 0 on timeout. */
static int nb_wait(volatile uint32_t *reg, uint32_t mask, uint32_t want)
{
    for (uint32_t i = 0; i < NB_WAIT_LOOPS; i++) {
        if ((*reg & mask) == want) {
            return 1;
        }
    }
    return 0;
}

/* 216 MHz: PLL from HSE bypass (or HSI), over-drive, 7 wait states, ART. Sequence of RM0410 §4.1.4
 * ("Entering Over-drive mode") and §3.3.2 (flash wait states before raising the clock). */
__attribute__((noinline)) void nb_board_clock_init(void)
{
    RCC_APB1ENR |= RCC_APB1ENR_PWREN;
    (void)RCC_APB1ENR; /* read back: the clock is on before PWR is touched */
    PWR_CR1 = (PWR_CR1 & ~PWR_CR1_VOS_MASK) | PWR_CR1_VOS_SCALE1;

    uint32_t pllcfgr;
    RCC_CR |= RCC_CR_HSEBYP;
    RCC_CR |= RCC_CR_HSEON;
    if (nb_wait(&RCC_CR, RCC_CR_HSERDY, RCC_CR_HSERDY)) {
        pllcfgr = RCC_PLLCFGR_PLLSRC_HSE | (4u << RCC_PLLCFGR_PLLM_POS); /* 8 MHz / 4 = 2 MHz */
    } else {
        RCC_CR &= ~RCC_CR_HSEON;
        RCC_CR &= ~RCC_CR_HSEBYP; /* writable only while HSE is off */
        RCC_CR |= RCC_CR_HSION;
        (void)nb_wait(&RCC_CR, RCC_CR_HSIRDY, RCC_CR_HSIRDY);
        pllcfgr = 8u << RCC_PLLCFGR_PLLM_POS; /* 16 MHz / 8 = 2 MHz */
    }
    pllcfgr |= (216u << RCC_PLLCFGR_PLLN_POS) | (0u << RCC_PLLCFGR_PLLP_POS) /* P = 2 */
               | (9u << RCC_PLLCFGR_PLLQ_POS) | (2u << RCC_PLLCFGR_PLLR_POS);
    RCC_CR &= ~RCC_CR_PLLON;
    (void)nb_wait(&RCC_CR, RCC_CR_PLLRDY, 0u);
    RCC_PLLCFGR = pllcfgr;
    RCC_CR |= RCC_CR_PLLON;
    (void)nb_wait(&RCC_CR, RCC_CR_PLLRDY, RCC_CR_PLLRDY);

    PWR_CR1 |= PWR_CR1_ODEN;
    (void)nb_wait(&PWR_CSR1, PWR_CSR1_ODRDY, PWR_CSR1_ODRDY);
    PWR_CR1 |= PWR_CR1_ODSWEN;
    (void)nb_wait(&PWR_CSR1, PWR_CSR1_ODSWRDY, PWR_CSR1_ODSWRDY);

    /* 7 wait states at 216 MHz / 2.7-3.6 V; reset the ART while it is off, then enable it */
    FLASH_ACR = (FLASH_ACR & ~(FLASH_ACR_LATENCY_MASK | FLASH_ACR_ARTEN)) | 7u;
    FLASH_ACR |= FLASH_ACR_ARTRST;
    FLASH_ACR &= ~FLASH_ACR_ARTRST;
    FLASH_ACR |= FLASH_ACR_ARTEN | FLASH_ACR_PRFTEN;
    (void)nb_wait(&FLASH_ACR, FLASH_ACR_LATENCY_MASK, 7u);

    RCC_CFGR = (RCC_CFGR & ~(RCC_CFGR_HPRE_MASK | RCC_CFGR_PPRE1_MASK | RCC_CFGR_PPRE2_MASK)) |
               RCC_CFGR_PPRE1_DIV4 | RCC_CFGR_PPRE2_DIV2;
    RCC_CFGR = (RCC_CFGR & ~RCC_CFGR_SW_MASK) | RCC_CFGR_SW_PLL;
    (void)nb_wait(&RCC_CFGR, RCC_CFGR_SWS_MASK, RCC_CFGR_SWS_PLL);
}

__attribute__((noinline)) void nb_board_uart_init(void)
{
    RCC_AHB1ENR |= RCC_AHB1ENR_GPIODEN;
    RCC_APB1ENR |= RCC_APB1ENR_USART3EN;
    (void)RCC_APB1ENR;
    RCC_DCKCFGR2 &= ~RCC_DCKCFGR2_UART3SEL_MASK; /* USART3 kernel clock = PCLK1 */

    /* PD8, PD9: alternate function 7, high speed, pull-up on RX */
    GPIOD_MODER = (GPIOD_MODER & ~((3u << 16) | (3u << 18))) | (2u << 16) | (2u << 18);
    GPIOD_OSPEEDR |= (3u << 16) | (3u << 18);
    GPIOD_PUPDR = (GPIOD_PUPDR & ~((3u << 16) | (3u << 18))) | (1u << 18);
    GPIOD_AFRH = (GPIOD_AFRH & ~0xFFu) | (7u << 0) | (7u << 4);

    USART3_CR1 = 0u;
    USART3_CR2 = 0u;
    USART3_CR3 = 0u;
    USART3_BRR = (PCLK1_HZ + NB_UART_BAUD / 2u) / NB_UART_BAUD; /* oversampling by 16 */
    USART3_CR1 = USART_CR1_TE | USART_CR1_RE | USART_CR1_UE;
}

__attribute__((noinline)) void nb_board_counter_init(void)
{
    nb_armv7m_enable_cyccnt();
}

void hal_init(void)
{
    nb_board_clock_init();
    nb_armv7m_enable_icache();
    nb_armv7m_enable_dcache();
    nb_board_uart_init();
    nb_board_counter_init();
}

void hal_uart_write(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        while (!(USART3_ISR & USART_ISR_TXE)) {
        }
        USART3_TDR = data[i];
    }
    while (!(USART3_ISR & USART_ISR_TC)) {
    }
}

uint8_t hal_uart_read_byte(void)
{
    for (;;) {
        const uint32_t isr = USART3_ISR;
        if (isr & (USART_ISR_ORE | USART_ISR_FE | USART_ISR_NE)) {
            /* a lost or garbled byte breaks the line's CRC; the host resends */
            USART3_ICR = USART_ICR_ORECF | USART_ICR_FECF | USART_ICR_NCF;
        }
        if (isr & USART_ISR_RXNE) {
            return (uint8_t)USART3_RDR;
        }
    }
}

uint32_t hal_counter(void)
{
    return DWT_CYCCNT;
}

uint32_t hal_counter_elapsed(uint32_t start, uint32_t end)
{
    return end - start; /* core cycles, exact */
}

void hal_halt(void)
{
    for (;;) {
        __asm volatile("wfi");
    }
}
