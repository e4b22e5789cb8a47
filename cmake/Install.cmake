# install() rules and the exported package: find_package(mpx CONFIG REQUIRED) + mpx::mpx
# (and mpx::proto, the wire layer it links).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(mpx_installed_targets mpx_proto mpx)
if(MPX_MPI)
  list(APPEND mpx_installed_targets mpx_mpi)
endif()
install(TARGETS ${mpx_installed_targets} EXPORT mpxTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY lib/include/mpx proto/include/mpx DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT mpxTargets NAMESPACE mpx:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mpx)

configure_package_config_file(cmake/mpxConfig.cmake.in ${PROJECT_BINARY_DIR}/mpxConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mpx)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mpxConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/mpxConfig.cmake ${PROJECT_BINARY_DIR}/mpxConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mpx)
