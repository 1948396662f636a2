/*
 * Guest entry point. The VMM enters at CPL 3 with RSP = boot->stack_top
 * (16-byte aligned) and every other GPR zero. Nothing to set up: bss is
 * zero-filled by the loader and there are no interrupts. The call pushes a
 * return address, so kemari_start sees the SysV-required RSP % 16 == 8.
 */
#include "kemari_abi.h"

	.section .text.start, "ax"
	.globl _start
	.type _start, @function
_start:
	xorl	%ebp, %ebp
	andq	$-16, %rsp
	call	kemari_start
	/* kemari_start never returns; if it did, keep asking to exit. */
1:	movl	$KEMARI_HC_EXIT, %eax
	movl	$255, %edi
	outl	%eax, $KEMARI_PORT_HYPERCALL
	jmp	1b
	.size _start, . - _start

	.section .note.GNU-stack, "", @progbits
