/*
 * Test oracle for src/dm/ioctl.ts, compiled against the system's
 * <linux/dm-ioctl.h> at test time. It never uses our TypeScript layout:
 *   layout                 JSON: sizeof/offsetof, request codes, flags
 *   parse <file>           JSON: a request as the kernel would walk it
 *                          (TABLE_LOAD specs chained from the current spec;
 *                          target message at data_start; string payload)
 *   make-status <file>     a TABLE_STATUS result (next from the first spec)
 *   make-names <file> <uuid?> / make-names-empty <file>
 *   make-versions <file> / make-deps <file>
 * The make-* buffers follow the result rules of docs/metadata-format.md §11.
 */
#include <linux/dm-ioctl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>

#define BUF_SIZE 16384

static uint8_t buf[1 << 20];

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

static void json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') printf("\\%c", c);
    else if (c < 0x20) printf("\\u%04x", c);
    else putchar(c);
  }
  putchar('"');
}

static void layout(void) {
  printf("{\"dm_ioctl\":{\"size\":%zu,\"version\":%zu,\"data_size\":%zu,\"data_start\":%zu,\"target_count\":%zu,"
         "\"open_count\":%zu,\"flags\":%zu,\"event_nr\":%zu,\"padding\":%zu,\"dev\":%zu,\"name\":%zu,\"uuid\":%zu,\"data\":%zu},",
         sizeof(struct dm_ioctl), offsetof(struct dm_ioctl, version), offsetof(struct dm_ioctl, data_size),
         offsetof(struct dm_ioctl, data_start), offsetof(struct dm_ioctl, target_count), offsetof(struct dm_ioctl, open_count),
         offsetof(struct dm_ioctl, flags), offsetof(struct dm_ioctl, event_nr), offsetof(struct dm_ioctl, padding),
         offsetof(struct dm_ioctl, dev), offsetof(struct dm_ioctl, name), offsetof(struct dm_ioctl, uuid), offsetof(struct dm_ioctl, data));
  printf("\"dm_target_spec\":{\"size\":%zu,\"sector_start\":%zu,\"length\":%zu,\"status\":%zu,\"next\":%zu,\"target_type\":%zu},",
         sizeof(struct dm_target_spec), offsetof(struct dm_target_spec, sector_start), offsetof(struct dm_target_spec, length),
         offsetof(struct dm_target_spec, status), offsetof(struct dm_target_spec, next), offsetof(struct dm_target_spec, target_type));
  printf("\"dm_target_deps\":{\"size\":%zu,\"count\":%zu,\"dev\":%zu},", sizeof(struct dm_target_deps),
         offsetof(struct dm_target_deps, count), offsetof(struct dm_target_deps, dev));
  printf("\"dm_name_list\":{\"size\":%zu,\"dev\":%zu,\"next\":%zu,\"name\":%zu},", sizeof(struct dm_name_list),
         offsetof(struct dm_name_list, dev), offsetof(struct dm_name_list, next), offsetof(struct dm_name_list, name));
  printf("\"dm_target_versions\":{\"size\":%zu,\"next\":%zu,\"version\":%zu,\"name\":%zu},", sizeof(struct dm_target_versions),
         offsetof(struct dm_target_versions, next), offsetof(struct dm_target_versions, version), offsetof(struct dm_target_versions, name));
  printf("\"dm_target_msg\":{\"size\":%zu,\"sector\":%zu,\"message\":%zu},", sizeof(struct dm_target_msg),
         offsetof(struct dm_target_msg, sector), offsetof(struct dm_target_msg, message));
  printf("\"lengths\":{\"DM_NAME_LEN\":%d,\"DM_UUID_LEN\":%d,\"DM_MAX_TYPE_NAME\":%d},", DM_NAME_LEN, DM_UUID_LEN, DM_MAX_TYPE_NAME);
  printf("\"version\":[%d,%d,%d],", DM_VERSION_MAJOR, DM_VERSION_MINOR, DM_VERSION_PATCHLEVEL);
  printf("\"requests\":{");
#define REQ(n, last) printf("\"%s\":%lu%s", #n, (unsigned long)(n), last ? "" : ",")
  REQ(DM_VERSION, 0); REQ(DM_REMOVE_ALL, 0); REQ(DM_LIST_DEVICES, 0); REQ(DM_DEV_CREATE, 0); REQ(DM_DEV_REMOVE, 0);
  REQ(DM_DEV_RENAME, 0); REQ(DM_DEV_SUSPEND, 0); REQ(DM_DEV_STATUS, 0); REQ(DM_DEV_WAIT, 0); REQ(DM_TABLE_LOAD, 0);
  REQ(DM_TABLE_CLEAR, 0); REQ(DM_TABLE_DEPS, 0); REQ(DM_TABLE_STATUS, 0); REQ(DM_LIST_VERSIONS, 0); REQ(DM_TARGET_MSG, 0);
  REQ(DM_DEV_SET_GEOMETRY, 0); REQ(DM_DEV_ARM_POLL, 0); REQ(DM_GET_TARGET_VERSION, 1);
  printf("},\"commands\":{");
#define CMD(n, last) printf("\"%s\":%d%s", #n, (int)(n), last ? "" : ",")
  CMD(DM_VERSION_CMD, 0); CMD(DM_REMOVE_ALL_CMD, 0); CMD(DM_LIST_DEVICES_CMD, 0); CMD(DM_DEV_CREATE_CMD, 0);
  CMD(DM_DEV_REMOVE_CMD, 0); CMD(DM_DEV_RENAME_CMD, 0); CMD(DM_DEV_SUSPEND_CMD, 0); CMD(DM_DEV_STATUS_CMD, 0);
  CMD(DM_DEV_WAIT_CMD, 0); CMD(DM_TABLE_LOAD_CMD, 0); CMD(DM_TABLE_CLEAR_CMD, 0); CMD(DM_TABLE_DEPS_CMD, 0);
  CMD(DM_TABLE_STATUS_CMD, 0); CMD(DM_LIST_VERSIONS_CMD, 0); CMD(DM_TARGET_MSG_CMD, 0); CMD(DM_DEV_SET_GEOMETRY_CMD, 0);
  CMD(DM_DEV_ARM_POLL_CMD, 0); CMD(DM_GET_TARGET_VERSION_CMD, 1);
  printf("},\"flags\":{");
#define FL(n, last) printf("\"%s\":%lu%s", #n, (unsigned long)(n), last ? "" : ",")
  FL(DM_READONLY_FLAG, 0); FL(DM_SUSPEND_FLAG, 0); FL(DM_PERSISTENT_DEV_FLAG, 0); FL(DM_STATUS_TABLE_FLAG, 0);
  FL(DM_ACTIVE_PRESENT_FLAG, 0); FL(DM_INACTIVE_PRESENT_FLAG, 0); FL(DM_BUFFER_FULL_FLAG, 0); FL(DM_SKIP_BDGET_FLAG, 0);
  FL(DM_SKIP_LOCKFS_FLAG, 0); FL(DM_NOFLUSH_FLAG, 0); FL(DM_QUERY_INACTIVE_TABLE_FLAG, 0); FL(DM_UEVENT_GENERATED_FLAG, 0);
  FL(DM_UUID_FLAG, 0); FL(DM_SECURE_DATA_FLAG, 0); FL(DM_DATA_OUT_FLAG, 0); FL(DM_DEFERRED_REMOVE, 0);
  FL(DM_INTERNAL_SUSPEND_FLAG, 0); FL(DM_IMA_MEASUREMENT_FLAG, 0); FL(DM_NAME_LIST_FLAG_HAS_UUID, 0);
  FL(DM_NAME_LIST_FLAG_DOESNT_HAVE_UUID, 1);
  printf("}}\n");
}

static size_t load(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) { perror(path); exit(2); }
  size_t n = fread(buf, 1, sizeof(buf), f);
  fclose(f);
  return n;
}

static void save(const char *path, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(buf, 1, n, f) != n) { perror(path); exit(2); }
  fclose(f);
}

/* NUL-terminated inside [p, end)? (the kernel's invalid_str) */
static int valid_str(const char *p, const char *end) {
  for (; p < end; p++) if (!*p) return 1;
  return 0;
}

static void parse(const char *path) {
  size_t n = load(path);
  struct dm_ioctl *io = (struct dm_ioctl *)buf;
  const char *end = (const char *)buf + n;
  printf("{\"bytes\":%zu,\"version\":[%u,%u,%u],\"data_size\":%u,\"data_start\":%u,\"target_count\":%u,\"flags\":%u,\"event_nr\":%u,",
         n, io->version[0], io->version[1], io->version[2], io->data_size, io->data_start, io->target_count, io->flags, io->event_nr);
  printf("\"dev\":%llu,\"major\":%u,\"minor\":%u,\"name\":", (unsigned long long)io->dev, major(io->dev), minor(io->dev));
  char name[DM_NAME_LEN + 1] = {0}, uuid[DM_UUID_LEN + 1] = {0};
  memcpy(name, io->name, DM_NAME_LEN);
  memcpy(uuid, io->uuid, DM_UUID_LEN);
  json_str(name);
  printf(",\"uuid\":");
  json_str(uuid);
  /* TABLE_LOAD walk: first spec at data_start, then spec + spec->next. */
  printf(",\"specs\":[");
  struct dm_target_spec *spec = (struct dm_target_spec *)(buf + io->data_start);
  for (uint32_t i = 0; i < io->target_count; i++) {
    char *params = (char *)(spec + 1);
    if ((const char *)params > end || !valid_str(params, end)) { printf("\"INVALID\""); break; }
    char type[DM_MAX_TYPE_NAME + 1] = {0};
    memcpy(type, spec->target_type, DM_MAX_TYPE_NAME);
    printf("%s{\"start\":%llu,\"length\":%llu,\"next\":%u,\"aligned\":%d,\"type\":", i ? "," : "", (unsigned long long)spec->sector_start,
           (unsigned long long)spec->length, spec->next, (int)(((uint8_t *)spec - buf) % 8 == 0));
    json_str(type);
    printf(",\"params\":");
    json_str(params);
    printf("}");
    spec = (struct dm_target_spec *)((char *)spec + spec->next);
  }
  printf("]");
  /* Target message view of the payload. */
  if (io->data_start + sizeof(struct dm_target_msg) < n) {
    struct dm_target_msg *m = (struct dm_target_msg *)(buf + io->data_start);
    printf(",\"msg_sector\":%llu,\"msg_valid\":%d,\"msg\":", (unsigned long long)m->sector, valid_str(m->message, end));
    if (valid_str(m->message, end)) json_str(m->message);
    else printf("null");
    printf(",\"string\":");
    if (valid_str((char *)buf + io->data_start, end)) json_str((char *)buf + io->data_start);
    else printf("null");
  }
  printf("}\n");
}

static struct dm_ioctl *result_header(uint32_t flags, uint32_t count) {
  memset(buf, 0, BUF_SIZE);
  struct dm_ioctl *io = (struct dm_ioctl *)buf;
  io->version[0] = 4;
  io->version[1] = 47;
  io->version[2] = 0;
  io->data_start = sizeof(struct dm_ioctl);
  io->flags = flags;
  io->target_count = count;
  io->dev = makedev(253, 7);
  strcpy(io->name, "pool");
  return io;
}

static void make_status(const char *path) {
  static const char *types[] = {"thin-pool", "linear", "thin"};
  static const char *params[] = {"0 1648/16384 0/8192 - rw discard_passdown queue_if_no_space - 1024 ", "8:16 2048", "1024 2047"};
  static const unsigned long long starts[] = {0, 2097152, 2099200}, lens[] = {2097152, 2048, 1000};
  struct dm_ioctl *io = result_header(DM_ACTIVE_PRESENT_FLAG, 3);
  char *out = (char *)buf + io->data_start, *p = out;
  for (int i = 0; i < 3; i++) {
    struct dm_target_spec *s = (struct dm_target_spec *)p;
    s->sector_start = starts[i];
    s->length = lens[i];
    strcpy(s->target_type, types[i]);
    p += sizeof(*s);
    strcpy(p, params[i]);
    p += strlen(params[i]) + 1;
    p = (char *)buf + align8((size_t)((uint8_t *)p - buf));
    s->next = (uint32_t)(p - out); /* from the first spec */
  }
  io->data_size = (uint32_t)((uint8_t *)p - buf);
  save(path, io->data_size);
}

static void make_names(const char *path, int with_uuid) {
  static const char *names[] = {"pool", "thin-with-a-rather-long-name-0123456789", "x"};
  static const char *uuids[] = {"LVM-abc", NULL, "CRYPT-0123456789abcdef"};
  static const unsigned majors[] = {253, 253, 4095}, minors[] = {0, 300, 1048575};
  struct dm_ioctl *io = result_header(with_uuid ? DM_UUID_FLAG : 0, 0);
  char *out = (char *)buf + io->data_start, *p = out;
  struct dm_name_list *prev = NULL;
  for (int i = 0; i < 3; i++) {
    struct dm_name_list *nl = (struct dm_name_list *)p;
    if (prev) prev->next = (uint32_t)((char *)nl - (char *)prev);
    nl->dev = makedev(majors[i], minors[i]);
    strcpy(nl->name, names[i]);
    uint32_t *ev = (uint32_t *)((char *)buf + align8((size_t)((uint8_t *)nl->name + strlen(names[i]) + 1 - buf)));
    ev[0] = 100 + i;
    ev[1] = 0;
    char *q = (char *)(ev + 2);
    if (with_uuid) {
      if (uuids[i]) {
        ev[1] = DM_NAME_LIST_FLAG_HAS_UUID;
        strcpy(q, uuids[i]);
        q += strlen(uuids[i]) + 1;
        q = (char *)buf + align8((size_t)((uint8_t *)q - buf));
      } else {
        ev[1] = DM_NAME_LIST_FLAG_DOESNT_HAVE_UUID;
      }
    }
    prev = nl;
    p = q;
  }
  io->data_size = (uint32_t)((uint8_t *)p - buf);
  save(path, io->data_size);
}

static void make_names_empty(const char *path) {
  struct dm_ioctl *io = result_header(0, 0);
  struct dm_name_list *nl = (struct dm_name_list *)((char *)buf + io->data_start);
  nl->dev = 0;
  io->data_size = io->data_start + sizeof(*nl);
  save(path, io->data_size);
}

static void make_versions(const char *path) {
  static const char *names[] = {"thin-pool", "thin", "linear"};
  static const uint32_t v[3][3] = {{1, 23, 0}, {1, 23, 0}, {1, 4, 0}};
  struct dm_ioctl *io = result_header(0, 0);
  char *out = (char *)buf + io->data_start, *p = out;
  struct dm_target_versions *prev = NULL;
  for (int i = 0; i < 3; i++) {
    struct dm_target_versions *t = (struct dm_target_versions *)p;
    if (prev) prev->next = (uint32_t)((char *)t - (char *)prev);
    memcpy(t->version, v[i], sizeof(t->version));
    strcpy(t->name, names[i]);
    prev = t;
    p = (char *)buf + align8((size_t)((uint8_t *)t->name + strlen(names[i]) + 1 - buf));
  }
  io->data_size = (uint32_t)((uint8_t *)p - buf);
  save(path, io->data_size);
}

static void make_deps(const char *path) {
  struct dm_ioctl *io = result_header(0, 0);
  struct dm_target_deps *d = (struct dm_target_deps *)((char *)buf + io->data_start);
  d->count = 3;
  d->dev[0] = makedev(8, 16);
  d->dev[1] = makedev(259, 3);
  d->dev[2] = makedev(253, 70000);
  io->data_size = (uint32_t)(io->data_start + sizeof(*d) + 3 * sizeof(d->dev[0]));
  save(path, io->data_size);
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  if (!strcmp(argv[1], "layout")) layout();
  else if (!strcmp(argv[1], "parse") && argc > 2) parse(argv[2]);
  else if (!strcmp(argv[1], "make-status") && argc > 2) make_status(argv[2]);
  else if (!strcmp(argv[1], "make-names") && argc > 3) make_names(argv[2], atoi(argv[3]));
  else if (!strcmp(argv[1], "make-names-empty") && argc > 2) make_names_empty(argv[2]);
  else if (!strcmp(argv[1], "make-versions") && argc > 2) make_versions(argv[2]);
  else if (!strcmp(argv[1], "make-deps") && argc > 2) make_deps(argv[2]);
  else return 2;
  return 0;
}
