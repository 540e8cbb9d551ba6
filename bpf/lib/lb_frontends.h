/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The service frontends (VIP:port), on their own: the tc programs read them too, to hand
 * a routed frontend's flows to the L7 proxy (MESH_LB_ROUTED). Pinned by name, so every
 * object that includes this shares the one map. */
#ifndef SWIFTMESH_LIB_LB_FRONTENDS_H
#define SWIFTMESH_LIB_LB_FRONTENDS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "mesh_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_LB_FRONTENDS);
	__type(key, struct mesh_lb_frontend_key);
	__type(value, struct mesh_lb_frontend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_lb_svc SEC(".maps");

#endif
