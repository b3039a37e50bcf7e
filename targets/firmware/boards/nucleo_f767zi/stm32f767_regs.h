/* The few STM32F767ZI peripheral registers this board needs, written out by hand (no STM32Cube or
 * CMSIS device headers offline). Base addresses, offsets and bit positions as in ST's reference
 * manual RM0410 (STM32F76xxx/77xxx).
 */
#ifndef STM32F767_REGS_H
#define STM32F767_REGS_H

#include "armv7m_regs.h"

/* RCC, reset and clock control (AHB1, 0x40023800) */
#define RCC_BASE 0x40023800u
#define RCC_CR NB_REG32(RCC_BASE + 0x00u)
#define RCC_PLLCFGR NB_REG32(RCC_BASE + 0x04u)
#define RCC_CFGR NB_REG32(RCC_BASE + 0x08u)
#define RCC_AHB1ENR NB_REG32(RCC_BASE + 0x30u)
#define RCC_APB1ENR NB_REG32(RCC_BASE + 0x40u)
#define RCC_DCKCFGR2 NB_REG32(RCC_BASE + 0x90u)

#define RCC_CR_HSION (1u << 0)
#define RCC_CR_HSIRDY (1u << 1)
#define RCC_CR_HSEON (1u << 16)
#define RCC_CR_HSERDY (1u << 17)
#define RCC_CR_HSEBYP (1u << 18)
#define RCC_CR_PLLON (1u << 24)
#define RCC_CR_PLLRDY (1u << 25)

#define RCC_PLLCFGR_PLLM_POS 0u  /* 6 bits, VCO input = source / M */
#define RCC_PLLCFGR_PLLN_POS 6u  /* 9 bits, VCO = input * N */
#define RCC_PLLCFGR_PLLP_POS 16u /* 2 bits, SYSCLK = VCO / (2 * (P + 1)) */
#define RCC_PLLCFGR_PLLSRC_HSE (1u << 22)
#define RCC_PLLCFGR_PLLQ_POS 24u /* 4 bits, 48 MHz domain = VCO / Q */
#define RCC_PLLCFGR_PLLR_POS 28u /* 3 bits (F76x), DSI clock */

#define RCC_CFGR_SW_MASK (3u << 0)
#define RCC_CFGR_SW_PLL (2u << 0)
#define RCC_CFGR_SWS_MASK (3u << 2)
#define RCC_CFGR_SWS_PLL (2u << 2)
#define RCC_CFGR_HPRE_MASK (0xFu << 4)
#define RCC_CFGR_PPRE1_MASK (7u << 10)
#define RCC_CFGR_PPRE1_DIV4 (5u << 10)
#define RCC_CFGR_PPRE2_MASK (7u << 13)
#define RCC_CFGR_PPRE2_DIV2 (4u << 13)

#define RCC_AHB1ENR_GPIODEN (1u << 3)
#define RCC_APB1ENR_USART3EN (1u << 18)
#define RCC_APB1ENR_PWREN (1u << 28)
#define RCC_DCKCFGR2_UART3SEL_MASK (3u << 4) /* 00 = APB1 clock */

/* PWR (APB1, 0x40007000) */
#define PWR_BASE 0x40007000u
#define PWR_CR1 NB_REG32(PWR_BASE + 0x00u)
#define PWR_CSR1 NB_REG32(PWR_BASE + 0x04u)
#define PWR_CR1_VOS_MASK (3u << 14)
#define PWR_CR1_VOS_SCALE1 (3u << 14)
#define PWR_CR1_ODEN (1u << 16)
#define PWR_CR1_ODSWEN (1u << 17)
#define PWR_CSR1_ODRDY (1u << 16)
#define PWR_CSR1_ODSWRDY (1u << 17)

/* Flash interface (AHB1, 0x40023C00) */
#define FLASH_BASE_REG 0x40023C00u
#define FLASH_ACR NB_REG32(FLASH_BASE_REG + 0x00u)
#define FLASH_ACR_LATENCY_MASK (0xFu << 0)
#define FLASH_ACR_PRFTEN (1u << 8)
#define FLASH_ACR_ARTEN (1u << 9)
#define FLASH_ACR_ARTRST (1u << 11)

/* GPIOD (AHB1, 0x40020C00) */
#define GPIOD_BASE 0x40020C00u
#define GPIOD_MODER NB_REG32(GPIOD_BASE + 0x00u)
#define GPIOD_OSPEEDR NB_REG32(GPIOD_BASE + 0x08u)
#define GPIOD_PUPDR NB_REG32(GPIOD_BASE + 0x0Cu)
#define GPIOD_AFRH NB_REG32(GPIOD_BASE + 0x24u)

/* USART3 (APB1, 0x40004800) */
#define USART3_BASE 0x40004800u
#define USART3_CR1 NB_REG32(USART3_BASE + 0x00u)
#define USART3_CR2 NB_REG32(USART3_BASE + 0x04u)
#define USART3_CR3 NB_REG32(USART3_BASE + 0x08u)
#define USART3_BRR NB_REG32(USART3_BASE + 0x0Cu)
#define USART3_ISR NB_REG32(USART3_BASE + 0x1Cu)
#define USART3_ICR NB_REG32(USART3_BASE + 0x20u)
#define USART3_RDR NB_REG32(USART3_BASE + 0x24u)
#define USART3_TDR NB_REG32(USART3_BASE + 0x28u)
#define USART_CR1_UE (1u << 0)
#define USART_CR1_RE (1u << 2)
#define USART_CR1_TE (1u << 3)
#define USART_ISR_FE (1u << 1)
#define USART_ISR_NE (1u << 2)
#define USART_ISR_ORE (1u << 3)
#define USART_ISR_RXNE (1u << 5)
#define USART_ISR_TC (1u << 6)
#define USART_ISR_TXE (1u << 7)
#define USART_ICR_FECF (1u << 1)
#define USART_ICR_NCF (1u << 2)
#define USART_ICR_ORECF (1u << 3)

#endif /* STM32F767_REGS_H */
