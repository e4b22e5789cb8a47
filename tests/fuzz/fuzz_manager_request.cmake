# The manager's request decoding, fuzzed against a live server core. The server sources are
# compiled into the target so the fuzzer sees their coverage.
add_executable(fuzz_manager_request fuzz_manager_request.cpp
  ${PROJECT_SOURCE_DIR}/lib/src/server_core.cpp
  ${PROJECT_SOURCE_DIR}/lib/src/server_objects.cpp
  ${PROJECT_SOURCE_DIR}/lib/src/server_tasks.cpp
  ${PROJECT_SOURCE_DIR}/lib/src/log.cpp
  ${PROJECT_SOURCE_DIR}/proto/src/manager.cpp
  ${PROJECT_SOURCE_DIR}/proto/src/frame.cpp
  ${PROJECT_SOURCE_DIR}/proto/src/handshake.cpp)
target_include_directories(fuzz_manager_request PRIVATE
  ${PROJECT_SOURCE_DIR}/lib/src ${PROJECT_SOURCE_DIR}/lib/include ${PROJECT_SOURCE_DIR}/proto/include)
target_compile_features(fuzz_manager_request PRIVATE cxx_std_20)
target_compile_options(fuzz_manager_request PRIVATE -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer)
target_link_options(fuzz_manager_request PRIVATE -fsanitize=fuzzer,address,undefined)
target_link_libraries(fuzz_manager_request PRIVATE
  OpenSSL::Crypto spdlog::spdlog fmt::fmt Boost::headers cereal::cereal Threads::Threads)
