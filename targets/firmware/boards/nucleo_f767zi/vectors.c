/* STM32F767 vector table: 16 system exceptions + 110 device IRQs, at 0x08000000 (.isr_vector).
 * The chip boots from the flash's ITCM alias (0x00200000) and Reset_Handler moves VTOR here. */
#include "vectors.h"

#define F767_IRQS 110

__attribute__((section(".isr_vector"), used)) const nb_vector_t nb_vectors[16 + F767_IRQS] = {
    NB_SYSTEM_VECTORS,
    [16 ... 16 + F767_IRQS - 1] = Default_Handler,
};
