/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The service load balancer's maps (see mesh_abi.h), pinned by name like the others. */
#ifndef SWIFTMESH_LIB_LB_MAPS_H
#define SWIFTMESH_LIB_LB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "mesh_abi.h"
#include "lb_frontends.h"


struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_LB_BACKEND_ENTRIES);
	__type(key, struct mesh_lb_slot_key);
	__type(value, __u32); /* backend id */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_lb_slot SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_LB_BACKEND_ENTRIES);
	__type(key, struct mesh_lb_backend_key);
	__type(value, struct mesh_lb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_lb_be SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MESH_LB_AFFINITY_ENTRIES);
	__type(key, struct mesh_lb_affinity_key);
	__type(value, struct mesh_lb_affinity);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_lb_aff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MESH_LB_REVNAT_ENTRIES);
	__type(key, struct mesh_lb_revnat_key);
	__type(value, struct mesh_lb_revnat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_lb_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MESH_LB_BACKEND_ENTRIES);
	__type(key, struct mesh_lb_stat_key);
	__type(value, struct mesh_lb_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_lb_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mesh_lb_sock);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mesh_lb_sk SEC(".maps");

#endif
