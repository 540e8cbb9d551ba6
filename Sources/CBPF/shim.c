#include "CBPF.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/btf.h>

/* libbpf reports through one process-wide print callback; this keeps the tail of what it
 * said so the Swift side can attach it to the error it throws. */
#define CBPF_LOG_CAP (64 * 1024)
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_buf[CBPF_LOG_CAP];
static size_t log_len;

static int capture(enum libbpf_print_level level, const char *fmt, va_list args)
{
	char line[4096];
	int n;

	if (level == LIBBPF_DEBUG)
		return 0;
	n = vsnprintf(line, sizeof(line), fmt, args);
	if (n < 0)
		return 0;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	pthread_mutex_lock(&log_lock);
	if (log_len + n >= CBPF_LOG_CAP) {
		/* keep the newest text: the verifier's verdict is at the end */
		size_t drop = log_len + n - CBPF_LOG_CAP + 1;
		if (drop > log_len)
			drop = log_len;
		memmove(log_buf, log_buf + drop, log_len - drop);
		log_len -= drop;
	}
	memcpy(log_buf + log_len, line, n);
	log_len += n;
	log_buf[log_len] = 0;
	pthread_mutex_unlock(&log_lock);
	return n;
}

void cbpf_log_capture_start(void)
{
	libbpf_set_print(capture);
	pthread_mutex_lock(&log_lock);
	log_len = 0;
	log_buf[0] = 0;
	pthread_mutex_unlock(&log_lock);
}

char *cbpf_log_take(void)
{
	char *out;

	pthread_mutex_lock(&log_lock);
	out = strndup(log_buf, log_len);
	log_len = 0;
	log_buf[0] = 0;
	pthread_mutex_unlock(&log_lock);
	return out;
}

struct bpf_object *cbpf_open_mem(const void *buf, size_t len, const char *name,
				 const char *pin_root)
{
	LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = name, .pin_root_path = pin_root);
	return bpf_object__open_mem(buf, len, &opts);
}

static void appendf(char *buf, size_t cap, const char *fmt, ...)
{
	size_t used = strnlen(buf, cap);
	va_list args;

	if (used + 1 >= cap)
		return;
	va_start(args, fmt);
	vsnprintf(buf + used, cap - used, fmt, args);
	va_end(args);
}

/* Reports one property of a pinned map that differs from the object's map: 1 if so. */
static int differ(char *report, size_t cap, const struct bpf_map *m, int earlier, const char *what,
		  unsigned long long pinned, unsigned long long declared)
{
	if (pinned == declared)
		return 0;
	if (earlier)
		appendf(report, cap, ", %s %llu, now %llu", what, pinned, declared);
	else
		appendf(report, cap, "%s: %s %llu, now %llu", bpf_map__name(m), what, pinned, declared);
	return 1;
}

int cbpf_unpin_incompatible(struct bpf_object *obj, char *report, size_t report_len)
{
	struct bpf_map *m;
	int removed = 0;

	if (report_len)
		report[0] = 0;
	bpf_object__for_each_map(m, obj) {
		const char *path = bpf_map__pin_path(m);
		struct bpf_map_info info = {};
		__u32 len = sizeof(info);
		int fd, differs = 0;

		if (!path)
			continue;
		fd = bpf_obj_get(path);
		if (fd < 0) {
			if (errno == ENOENT)
				continue; /* not pinned yet: load pins it */
			return -errno;
		}
		if (bpf_obj_get_info_by_fd(fd, &info, &len)) {
			int err = -errno;

			close(fd);
			return err;
		}
		close(fd);
		differs += differ(report, report_len, m, differs, "type", info.type, bpf_map__type(m));
		differs += differ(report, report_len, m, differs, "key size", info.key_size, bpf_map__key_size(m));
		differs += differ(report, report_len, m, differs, "value size", info.value_size, bpf_map__value_size(m));
		/* libbpf sizes a perf event array to the CPUs itself; none is pinned here */
		if (bpf_map__type(m) != BPF_MAP_TYPE_PERF_EVENT_ARRAY)
			differs += differ(report, report_len, m, differs, "entries", info.max_entries, bpf_map__max_entries(m));
		differs += differ(report, report_len, m, differs, "flags", info.map_flags, bpf_map__map_flags(m));
		if (!differs)
			continue;
		appendf(report, report_len, "\n");
		if (unlink(path) && errno != ENOENT)
			return -errno;
		removed++;
	}
	return removed;
}

int cbpf_set_rodata(struct bpf_object *obj, const char *var, const void *value, size_t size)
{
	struct bpf_map *map = NULL, *m;
	const struct btf *btf = bpf_object__btf(obj);
	const struct btf_type *sec;
	const struct btf_var_secinfo *vs;
	size_t data_size = 0;
	char *data;
	int id, i;

	bpf_object__for_each_map(m, obj) {
		const char *n = bpf_map__name(m);
		size_t nl = strlen(n);
		/* libbpf names the map "<obj prefix>.rodata" */
		if (nl >= 7 && strcmp(n + nl - 7, ".rodata") == 0) {
			map = m;
			break;
		}
	}
	if (!map || !btf)
		return -ENOENT;
	id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
	if (id < 0)
		return -ENOENT;
	sec = btf__type_by_id(btf, id);
	data = bpf_map__initial_value(map, &data_size);
	if (!data)
		return -ENOENT;
	vs = btf_var_secinfos(sec);
	for (i = 0; i < btf_vlen(sec); i++, vs++) {
		const struct btf_type *v = btf__type_by_id(btf, vs->type);
		if (strcmp(btf__name_by_offset(btf, v->name_off), var) != 0)
			continue;
		if (vs->size != size || vs->offset + size > data_size)
			return -EINVAL;
		memcpy(data + vs->offset, value, size);
		return 0;
	}
	return -ENOENT;
}

static void tc_hook(struct bpf_tc_hook *hook, int ifindex, int ingress)
{
	memset(hook, 0, sizeof(*hook));
	hook->sz = sizeof(*hook);
	hook->ifindex = ifindex;
	hook->attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS;
}

int cbpf_tc_attach(int ifindex, int ingress, int prog_fd, uint32_t handle, uint32_t priority)
{
	struct bpf_tc_hook hook;
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority, .prog_fd = prog_fd,
		    .flags = BPF_TC_F_REPLACE);
	int err;

	tc_hook(&hook, ifindex, ingress);
	err = bpf_tc_hook_create(&hook);
	if (err && err != -EEXIST)
		return err;
	return bpf_tc_attach(&hook, &opts);
}

int cbpf_tc_detach(int ifindex, int ingress, uint32_t handle, uint32_t priority)
{
	struct bpf_tc_hook hook;
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority);

	tc_hook(&hook, ifindex, ingress);
	return bpf_tc_detach(&hook, &opts);
}

int64_t cbpf_tc_query(int ifindex, int ingress, uint32_t handle, uint32_t priority)
{
	struct bpf_tc_hook hook;
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority);
	int err;

	tc_hook(&hook, ifindex, ingress);
	err = bpf_tc_query(&hook, &opts);
	if (err)
		return err;
	return opts.prog_id;
}

int cbpf_test_run_skb(int prog_fd, const void *data, uint32_t len, struct __sk_buff *ctx_in,
		      struct __sk_buff *ctx_out, uint32_t *retval)
{
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = data, .data_size_in = len, .ctx_in = ctx_in,
		    .ctx_size_in = sizeof(*ctx_in), .ctx_out = ctx_out, .ctx_size_out = sizeof(*ctx_out),
		    .repeat = 1);
	int err = bpf_prog_test_run_opts(prog_fd, &opts);

	if (err)
		return err < 0 ? err : -err;
	*retval = opts.retval;
	return 0;
}
