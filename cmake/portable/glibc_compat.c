// Linked into each library of the portable build (cmake/portable.cmake), with
// `ld --wrap=NAME` for every NAME wrapped here: calls to glibc functions newer
// than 2.28, from our objects and from the static libstdc++, land
// on __wrap_NAME, which calls the function's version of glibc 2.2.5 (x86-64's
// first) or does the same with older calls. scripts/check-portable.js checks
// that no newer version is left.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <sys/random.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

#define HIDDEN __attribute__((visibility("hidden")))

// The static libstdc++ of GCC >= 11 reads glibc 2.32's __libc_single_threaded
// to skip atomic reference counts in single-threaded processes. A hidden copy
// of our own satisfies it without that glibc: 0 means "assume threads", always
// correct, only not the shortcut.
HIDDEN char __libc_single_threaded = 0;

// __wrap_NAME calls NAME@GLIBC_2.2.5.
#define OLD(ret, name, params, args)                              \
  extern ret name##_glibc_2_2_5 params;                           \
  __asm__(".symver " #name "_glibc_2_2_5," #name "@GLIBC_2.2.5"); \
  HIDDEN ret __wrap_##name params { return name##_glibc_2_2_5 args; }

// libdl and libpthread, folded into libc in 2.34 under new versions.
OLD(void*, dlopen, (const char* f, int m), (f, m))
OLD(void*, dlsym, (void* h, const char* s), (h, s))
OLD(char*, dlerror, (void), ())
OLD(int, dlclose, (void* h), (h))
OLD(int, dladdr, (const void* a, Dl_info* i), (a, i))
OLD(int, pthread_create, (pthread_t * t, const pthread_attr_t* a, void* (*f)(void*), void* x), (t, a, f, x))
OLD(int, pthread_join, (pthread_t t, void** r), (t, r))
OLD(int, pthread_detach, (pthread_t t), (t))
OLD(int, pthread_once, (pthread_once_t * o, void (*f)(void)), (o, f))
OLD(int, pthread_key_create, (pthread_key_t * k, void (*d)(void*)), (k, d))
OLD(int, __pthread_key_create, (pthread_key_t * k, void (*d)(void*)), (k, d))
OLD(int, pthread_key_delete, (pthread_key_t k), (k))
OLD(void*, pthread_getspecific, (pthread_key_t k), (k))
OLD(int, pthread_setspecific, (pthread_key_t k, const void* v), (k, v))
OLD(int, pthread_mutex_trylock, (pthread_mutex_t * m), (m))
OLD(int, pthread_rwlock_rdlock, (pthread_rwlock_t * l), (l))
OLD(int, pthread_rwlock_wrlock, (pthread_rwlock_t * l), (l))
OLD(int, pthread_rwlock_unlock, (pthread_rwlock_t * l), (l))
OLD(int, pthread_sigmask, (int h, const sigset_t* s, sigset_t* o), (h, s, o))
OLD(int, pthread_attr_setstacksize, (pthread_attr_t * a, size_t s), (a, s))
OLD(int, pthread_getattr_np, (pthread_t t, pthread_attr_t* a), (t, a))

// What the static CUDA runtime (the CUDA prebuild) calls besides.
OLD(int, pthread_kill, (pthread_t t, int sig), (t, sig))
OLD(int, pthread_mutexattr_init, (pthread_mutexattr_t * a), (a))
OLD(int, pthread_mutexattr_destroy, (pthread_mutexattr_t * a), (a))
OLD(int, pthread_mutexattr_settype, (pthread_mutexattr_t * a, int t), (a, t))
OLD(int, pthread_mutexattr_setpshared, (pthread_mutexattr_t * a, int p), (a, p))
OLD(int, pthread_condattr_setpshared, (pthread_condattr_t * a, int p), (a, p))
OLD(int, pthread_rwlock_init, (pthread_rwlock_t * l, const pthread_rwlockattr_t* a), (l, a))
OLD(int, pthread_rwlock_destroy, (pthread_rwlock_t * l), (l))
OLD(int, pthread_rwlock_tryrdlock, (pthread_rwlock_t * l), (l))
OLD(int, pthread_rwlock_trywrlock, (pthread_rwlock_t * l), (l))
OLD(int, pthread_rwlock_timedrdlock, (pthread_rwlock_t * l, const struct timespec* t), (l, t))
OLD(int, pthread_rwlock_timedwrlock, (pthread_rwlock_t * l, const struct timespec* t), (l, t))
OLD(int, pthread_rwlockattr_init, (pthread_rwlockattr_t * a), (a))
OLD(int, pthread_rwlockattr_destroy, (pthread_rwlockattr_t * a), (a))
OLD(int, pthread_rwlockattr_setpshared, (pthread_rwlockattr_t * a, int p), (a, p))
OLD(int, pthread_spin_init, (pthread_spinlock_t * l, int p), (l, p))
OLD(int, pthread_spin_destroy, (pthread_spinlock_t * l), (l))
OLD(int, pthread_spin_lock, (pthread_spinlock_t * l), (l))
OLD(int, pthread_spin_trylock, (pthread_spinlock_t * l), (l))
OLD(int, pthread_spin_unlock, (pthread_spinlock_t * l), (l))
OLD(int, sem_init, (sem_t * s, int p, unsigned v), (s, p, v))
OLD(int, sem_destroy, (sem_t * s), (s))
OLD(int, sem_wait, (sem_t * s), (s))
OLD(int, sem_trywait, (sem_t * s), (s))
OLD(int, sem_timedwait, (sem_t * s, const struct timespec* t), (s, t))
OLD(int, sem_post, (sem_t * s), (s))
OLD(int, shm_open, (const char* n, int f, mode_t m), (n, f, m))
OLD(int, shm_unlink, (const char* n), (n))
OLD(void*, dlvsym, (void* h, const char* s, const char* v), (h, s, v))
extern void* dlmopen_glibc_2_3_4(Lmid_t ns, const char* f, int m);
__asm__(".symver dlmopen_glibc_2_3_4,dlmopen@GLIBC_2.3.4");
HIDDEN void* __wrap_dlmopen(Lmid_t ns, const char* f, int m) { return dlmopen_glibc_2_3_4(ns, f, m); }

// libm's versions of 2.29 only dropped the errno wrappers: the old ones compute the same.
OLD(double, exp, (double x), (x))
OLD(double, exp2, (double x), (x))
OLD(double, log, (double x), (x))
OLD(double, log2, (double x), (x))
OLD(double, pow, (double x, double y), (x, y))

// glibc >= 2.38 headers send strto* to C23's __isoc23_strto* (0b prefixes);
// the classic ones read everything else alike.
#define ISOC23(ret, name)                               \
  extern ret name(const char* s, char** end, int base); \
  HIDDEN ret __wrap___isoc23_##name(const char* s, char** end, int base) { return name(s, end, base); }
ISOC23(long, strtol)
ISOC23(unsigned long, strtoul)
ISOC23(long long, strtoll)
ISOC23(unsigned long long, strtoull)

// stat and friends became functions in 2.33; before, the header called __xstat.
#define XSTAT(name, old, arg_t)                                   \
  extern int old##_glibc_2_2_5(int ver, arg_t a, struct stat* s); \
  __asm__(".symver " #old "_glibc_2_2_5," #old "@GLIBC_2.2.5");   \
  HIDDEN int __wrap_##name(arg_t a, struct stat* s) { return old##_glibc_2_2_5(1, a, s); }
XSTAT(stat, __xstat, const char*)
XSTAT(lstat, __lxstat, const char*)
XSTAT(fstat, __fxstat, int)
XSTAT(stat64, __xstat64, const char*)
XSTAT(lstat64, __lxstat64, const char*)
XSTAT(fstat64, __fxstat64, int)

// pthread_cond_clockwait (2.30; std::condition_variable's steady-clock waits):
// the same deadline on CLOCK_REALTIME, which pthread_cond_timedwait waits on.
HIDDEN int __wrap_pthread_cond_clockwait(pthread_cond_t* c, pthread_mutex_t* m, clockid_t clock,
                                         const struct timespec* at) {
  if (clock == CLOCK_REALTIME) return pthread_cond_timedwait(c, m, at);
  struct timespec now, real;
  clock_gettime(clock, &now);
  clock_gettime(CLOCK_REALTIME, &real);
  int64_t ns = (int64_t)(at->tv_sec - now.tv_sec) * 1000000000 + (at->tv_nsec - now.tv_nsec);
  if (ns < 0) ns = 0;
  ns += real.tv_nsec;
  real.tv_sec += ns / 1000000000;
  real.tv_nsec = ns % 1000000000;
  return pthread_cond_timedwait(c, m, &real);
}

// arc4random (2.36; std::random_device): the kernel's getrandom (2.25).
HIDDEN uint32_t __wrap_arc4random(void) {
  uint32_t v = 0;
  while (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) {
  }
  return v;
}
