/*
 * MeshABI: bpf/include/mesh_abi.h, the one definition of what the kernel programs and
 * meshd share, as a C module of its own. MeshModel reads its constants (identities,
 * protocol numbers) without taking libbpf; CBPF builds on it for the Datapath module.
 */
#ifndef SWIFTMESH_MESHABI_H
#define SWIFTMESH_MESHABI_H

#include "../../../bpf/include/mesh_abi.h"

#endif
