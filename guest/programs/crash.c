/*
 * crash: deliberately faults so the VMM's crash reporting can be tested.
 *
 * Args: mode=ud|gp|pf|de|bp|panic (default ud)
 *   ud     ud2                                  -> #UD (vector 6)
 *   gp     cli (privileged at CPL 3)            -> #GP (vector 13, error 0)
 *   pf     4-byte write to address 0x0          -> #PF (vector 14, error 6, CR2 0)
 *   de     32-bit div by zero                   -> #DE (vector 0)
 *   bp     int3                                 -> #BP (vector 3)
 *   panic  panic("deliberate panic")            -> HC_PANIC
 *
 * Console output: "crash: mode=<m>" (drained before the fault). If the
 * faulting instruction ever returns, the program panics with
 * "crash: mode=<m> did not fault".
 */
#include "kemari.h"

int kemari_main(void) {
  const char *mode = arg_str("mode", "ud");
  printf("crash: mode=%s\n", mode);
  console_flush(2 * NS_PER_SEC); /* let the line out before we die */

  if (strcmp(mode, "ud") == 0) {
    __asm__ volatile("ud2" ::: "memory");
  } else if (strcmp(mode, "gp") == 0) {
    __asm__ volatile("cli" ::: "memory");
  } else if (strcmp(mode, "pf") == 0) {
    /* Through asm so the compiler cannot reason about the null pointer. */
    __asm__ volatile("movl $0xdead, (%0)" : : "r"((uintptr_t)0) : "memory");
  } else if (strcmp(mode, "de") == 0) {
    uint32_t lo = 1, hi = 0, divisor = 0;
    __asm__ volatile("divl %2" : "+a"(lo), "+d"(hi) : "r"(divisor) : "cc");
  } else if (strcmp(mode, "bp") == 0) {
    __asm__ volatile("int3" ::: "memory");
  } else if (strcmp(mode, "panic") == 0) {
    panic("deliberate panic");
  } else {
    panic("crash: unknown mode '%s' (ud|gp|pf|de|bp|panic)", mode);
  }
  panic("crash: mode=%s did not fault", mode);
}
