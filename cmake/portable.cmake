# The portable build of the prebuilt addon (MOE_EP_PORTABLE), for x86-64 Linux
# with glibc >= 2.28 and nothing else installed:
# - libstdc++ is linked in (-static-libstdc++); libgcc's unwinder stays the
#   shared libgcc_s.so.1 that every glibc system and node itself have (GCC_3.0
#   to GCC_4.2 symbol versions), so that an exception thrown in the Gloo plugin
#   is unwound by the same unwinder in the addon's frames;
# - every glibc function newer than 2.28 that the objects (ours and the static
#   libstdc++'s) call goes through a wrapper of portable/glibc_compat.c
#   (ld --wrap), which calls the function's old version or an equivalent;
# - symbols are hidden, and a version script exports only the entry points
#   (portable/*.map): napi_register_module_v1 for the addon, the C ABI of
#   cpp/include/moe_ep.h (moe_*) for libmoe_ep.so, one entry for the Gloo plugin.
# scripts/check-portable.js checks the result with objdump.

# The glibc functions wrapped, each with its wrapper in portable/glibc_compat.c.
set(MOE_EP_GLIBC_WRAPS
    dlopen dlsym dlerror dlclose dladdr
    pthread_create pthread_join pthread_detach pthread_once pthread_key_create __pthread_key_create
    pthread_key_delete pthread_getspecific pthread_setspecific pthread_mutex_trylock pthread_rwlock_rdlock
    pthread_rwlock_wrlock pthread_rwlock_unlock pthread_sigmask pthread_attr_setstacksize pthread_getattr_np
    pthread_cond_clockwait exp exp2 log log2 pow stat lstat fstat stat64 lstat64 fstat64 arc4random
    __isoc23_strtol __isoc23_strtoul __isoc23_strtoll __isoc23_strtoull
    pthread_kill pthread_mutexattr_init pthread_mutexattr_destroy pthread_mutexattr_settype
    pthread_mutexattr_setpshared pthread_condattr_setpshared pthread_rwlock_init pthread_rwlock_destroy
    pthread_rwlock_tryrdlock pthread_rwlock_trywrlock pthread_rwlock_timedrdlock pthread_rwlock_timedwrlock
    pthread_rwlockattr_init pthread_rwlockattr_destroy pthread_rwlockattr_setpshared pthread_spin_init
    pthread_spin_destroy pthread_spin_lock pthread_spin_trylock pthread_spin_unlock sem_init sem_destroy
    sem_wait sem_trywait sem_timedwait sem_post shm_open shm_unlink dlvsym dlmopen)

if(MOE_EP_PORTABLE)
  if(NOT CMAKE_SYSTEM_NAME STREQUAL "Linux" OR NOT CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
    message(FATAL_ERROR "moe-ep: MOE_EP_PORTABLE is for x86-64 Linux")
  endif()
  # Flags, not CMake's visibility presets: a source's own -fvisibility=default
  # (below) must come after them on the command line.
  add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-fvisibility=hidden> $<$<COMPILE_LANGUAGE:CXX>:-fvisibility-inlines-hidden>
                      $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-fvisibility=hidden>)
  # The C ABI keeps default visibility: the version script picks what it exports.
  file(GLOB MOE_CAPI_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/cpp/capi/*.cpp)
  set_source_files_properties(${MOE_CAPI_SOURCES} PROPERTIES COMPILE_OPTIONS "-fvisibility=default")
endif()

# Links `target` the portable way (no-op unless MOE_EP_PORTABLE), exporting
# what `map` lists.
function(moe_ep_portable_link target map)
  if(NOT MOE_EP_PORTABLE)
    return()
  endif()
  target_sources(${target} PRIVATE ${CMAKE_SOURCE_DIR}/cmake/portable/glibc_compat.c)
  # libpthread, libdl and librt named too: on glibc < 2.34 their functions'
  # old versions live there, not in libc.
  target_link_options(${target} PRIVATE -static-libstdc++ -Wl,--version-script=${map}
                      -Wl,--no-as-needed -l:libpthread.so.0 -l:libdl.so.2 -l:librt.so.1 -Wl,--as-needed)
  foreach(fn ${MOE_EP_GLIBC_WRAPS})
    target_link_options(${target} PRIVATE -Wl,--wrap=${fn})
  endforeach()
  set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS ${map})
endfunction()
