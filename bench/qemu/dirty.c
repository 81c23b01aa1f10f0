/* The guest side of tern's QEMU comparison: the init program of a tiny Linux
 * guest that does what the migration benchmark's Wasm app does.
 *
 * It fills MIB MiB (default 64) with non-zero, incompressible words, then
 * every 10 ms writes one word in each of RATE per cent (default 1) of its
 * 4 KiB pages, chosen pseudo-randomly, catching up when a tick was late so
 * the average rate holds. Every tick it measures the gap since the previous
 * one; once a second it prints the largest gap of that second, which is the
 * pause the program saw (a migration's downtime as the guest feels it).
 *
 * MIB and RATE arrive as environment variables: the kernel hands unknown
 * `NAME=value` words of its command line to init that way. Built static
 * (`gcc -static -O2`), it is the whole of the guest's user space. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t x = 0x2545f4914f6cdd1dULL;

static uint64_t next(void) {
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return x;
}

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static long env_or(const char *name, long dflt) {
  const char *v = getenv(name);
  if (!v) return dflt;
  long n = strtol(v, NULL, 10);
  return n > 0 ? n : dflt;
}

int main(void) {
  long mib = env_or("MIB", 64);
  long rate = env_or("RATE", 1);
  if (mib > 4096) mib = 4096;
  if (rate > 100) rate = 100;
  size_t bytes = (size_t)mib << 20;
  size_t pages = bytes / 4096;
  uint64_t *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (mem == MAP_FAILED) {
    printf("dirty: mmap of %ld MiB failed\n", mib);
    fflush(stdout);
    for (;;) pause();
  }
  for (size_t i = 0; i < bytes / 8; i++) mem[i] = next() | 1;
  /* Pages per 10 ms, in thousandths so that small rates stay exact. */
  uint64_t milli_per_tick = (uint64_t)pages * rate * 10;
  printf("dirty: ready %ld MiB, %ld%% of %zu pages per 10 ms\n", mib, rate, pages);
  fflush(stdout);

  int64_t start = now_ns(), last = start, second = start, worst = 0;
  uint64_t done_milli = 0;
  struct timespec tick;
  clock_gettime(CLOCK_MONOTONIC, &tick);
  for (;;) {
    tick.tv_nsec += 10000000;
    if (tick.tv_nsec >= 1000000000) {
      tick.tv_nsec -= 1000000000;
      tick.tv_sec += 1;
    }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &tick, NULL);
    int64_t t = now_ns();
    if (t - last > worst) worst = t - last;
    last = t;
    /* Catch up: the pages owed since the start, not per tick. */
    uint64_t owed = (uint64_t)((t - start) / 10000000) * milli_per_tick;
    for (; done_milli + 1000 <= owed; done_milli += 1000) {
      uint64_t r = next();
      mem[(r % pages) * 512 + ((r >> 52) & 511)] = r;
    }
    if (t - second >= 1000000000) {
      printf("dirty: max-gap-us %lld\n", (long long)(worst / 1000));
      fflush(stdout);
      worst = 0;
      second = t;
      /* Late ticks are not made up for with a burst of sleeps. */
      clock_gettime(CLOCK_MONOTONIC, &tick);
    }
  }
}
