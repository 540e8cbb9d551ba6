/* Header-only module: SwiftPM builds a C target from at least one source file. */
#include "MeshABI.h"
