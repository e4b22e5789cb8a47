# The manager's request decoding, fuzzed against a live server core: the server is the
# library's, so the target links it and reaches its private headers.
add_executable(fuzz_manager_request fuzz_manager_request.cpp)
target_include_directories(fuzz_manager_request PRIVATE ${PROJECT_SOURCE_DIR}/lib/src)
target_compile_options(fuzz_manager_request PRIVATE -fsanitize=fuzzer)
target_link_options(fuzz_manager_request PRIVATE -fsanitize=fuzzer)
target_link_libraries(fuzz_manager_request PRIVATE mpx::mpx mpx_warnings)
