# install() rules and the exported package: find_package(mpx CONFIG REQUIRED) + mpx::mpx
# (and mpx::proto, the wire layer it links); the component `mpi`
# (find_package(mpx CONFIG REQUIRED COMPONENTS mpi)) adds mpx::mpi, in an export set of its own
# so that a consumer who does not ask for it needs neither MPI nor Boost.MPI.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS mpx_proto mpx EXPORT mpxTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY lib/include/mpx proto/include/mpx DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT mpxTargets NAMESPACE mpx:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mpx)
if(MPX_MPI)
  install(TARGETS mpx_mpi EXPORT mpxMpiTargets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
          INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(EXPORT mpxMpiTargets NAMESPACE mpx:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mpx)
endif()

configure_package_config_file(cmake/mpxConfig.cmake.in ${PROJECT_BINARY_DIR}/mpxConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mpx)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mpxConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/mpxConfig.cmake ${PROJECT_BINARY_DIR}/mpxConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mpx)
