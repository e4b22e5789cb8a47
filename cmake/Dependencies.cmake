# Every dependency comes from a Debian 12 package; a missing one stops configure
# with the package to install (cmake/install-deps.sh installs them all).
function(mpx_require found what package)
  if(NOT ${found})
    message(FATAL_ERROR "mpx needs ${what}: install it with 'apt-get install ${package}' "
                        "(or run 'sh cmake/install-deps.sh' for everything)")
  endif()
endfunction()

find_package(Threads REQUIRED)

find_package(Boost 1.74 QUIET COMPONENTS serialization)
mpx_require(Boost_FOUND "Boost.Asio and Boost.Serialization" "libboost-dev libboost-serialization-dev")

find_package(cereal CONFIG QUIET)
mpx_require(cereal_FOUND "cereal" "libcereal-dev")

find_package(OpenSSL QUIET)
mpx_require(OPENSSL_FOUND "OpenSSL (libcrypto)" "libssl-dev")

find_package(fmt CONFIG QUIET)
mpx_require(fmt_FOUND "fmt" "libfmt-dev")

find_package(spdlog CONFIG QUIET)
mpx_require(spdlog_FOUND "spdlog" "libspdlog-dev")

if(MPX_MPI)
  find_package(MPI QUIET COMPONENTS CXX)
  find_package(Boost 1.74 QUIET COMPONENTS mpi)
  if(NOT MPI_CXX_FOUND OR NOT TARGET Boost::mpi)
    message(FATAL_ERROR "mpx::mpi (the pool on MPI ranks) needs Open MPI and Boost.MPI: install them with "
                        "'apt-get install libopenmpi-dev openmpi-bin libboost-mpi-dev', or configure with "
                        "-DMPX_MPI=OFF to build without it")
  endif()
endif()

if(MPX_BUILD_TESTS)
  find_package(doctest CONFIG QUIET)
  mpx_require(doctest_FOUND "doctest" "doctest-dev")
endif()

if(MPX_BUILD_APPS)
  find_package(CLI11 CONFIG QUIET)
  mpx_require(CLI11_FOUND "CLI11" "libcli11-dev")
  find_package(Eigen3 3.3 CONFIG QUIET)
  mpx_require(Eigen3_FOUND "Eigen" "libeigen3-dev")
  find_package(nlohmann_json 3 CONFIG QUIET)   # the workloads' --json
  mpx_require(nlohmann_json_FOUND "nlohmann::json" "nlohmann-json3-dev")
  find_package(benchmark CONFIG QUIET)   # optional: apps/bench prints plain lines either way
  find_package(Python3 COMPONENTS Interpreter QUIET)
endif()
