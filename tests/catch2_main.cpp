// The one Catch2 v2 main shared by every unit-test binary (Debian ships Catch2 v2, header-only).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
