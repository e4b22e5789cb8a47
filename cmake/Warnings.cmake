# Warnings for mpx's own targets (never forced on consumers).
add_library(mpx_warnings INTERFACE)
target_compile_options(mpx_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align -Woverloaded-virtual
  -Wnull-dereference -Wimplicit-fallthrough
  $<$<BOOL:${MPX_WERROR}>:-Werror>)
