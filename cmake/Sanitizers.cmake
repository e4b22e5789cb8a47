# MPX_SANITIZE=address -> AddressSanitizer + UndefinedBehaviorSanitizer; =thread -> ThreadSanitizer.
if(MPX_SANITIZE STREQUAL "address")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(MPX_SANITIZE STREQUAL "thread")
  # GCC warns (-Wtsan) that TSan does not model std::atomic_thread_fence, which Boost.Asio uses;
  # the fences sit next to real atomics there, so the warning would only break -Werror builds.
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer
                      $<$<CXX_COMPILER_ID:GNU>:-Wno-tsan>)
  add_link_options(-fsanitize=thread)
elseif(NOT MPX_SANITIZE STREQUAL "")
  message(FATAL_ERROR "MPX_SANITIZE must be '', 'address' or 'thread' (got '${MPX_SANITIZE}')")
endif()

# A fuzz build instruments every target for the fuzzer (coverage) and for ASan + UBSan, so the
# libraries the fuzz targets link are explored as well as the targets' own code.
if(MPX_FUZZ AND CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()
