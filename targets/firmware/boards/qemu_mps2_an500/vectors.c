/* mps2-an500 vector table: 16 system exceptions + 32 device IRQs, at 0x00000000 (.isr_vector). */
#include "vectors.h"

#define AN500_IRQS 32

__attribute__((section(".isr_vector"), used)) const nb_vector_t nb_vectors[16 + AN500_IRQS] = {
    NB_SYSTEM_VECTORS,
    [16 ... 16 + AN500_IRQS - 1] = Default_Handler,
};
