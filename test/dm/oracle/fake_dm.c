/*
 * LD_PRELOAD stand-in for the dm ioctls, so the native layer's retry, errno
 * and copy logic can run on a host without device-mapper. Only requests of
 * ioctl type 0xfd are faked; everything else goes to the real ioctl(). Each
 * faked call appends "<nr> <data_size> <version> <flags> <name>" to $FAKE_DM_LOG.
 *
 * Devices, by the request's name field:
 *   "eintr"       first call fails with EINTR, the next succeeds
 *   "never-fits"  TABLE_STATUS always answers BUFFER_FULL
 *   anything else TABLE_STATUS -> ENXIO
 * Commands:
 *   VERSION       answers 4.47.0
 *   LIST_DEVICES  $FAKE_DM_DEVICES devices with 100-char names (BUFFER_FULL
 *                 until they fit, as the kernel does)
 *   TARGET_MSG    "fail-eexist" -> EEXIST; "big-output" -> 40000 bytes of
 *                 text (BUFFER_FULL until it fits; on BUFFER_FULL the input
 *                 message is scribbled over, so a retry that does not resend
 *                 the original request is caught: EINVAL); "quiet" -> no
 *                 output; "echo <text>" -> <text> back with DATA_OUT
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/dm-ioctl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>

static int eintr_done;

static void log_call(unsigned nr, struct dm_ioctl *io) {
  const char *path = getenv("FAKE_DM_LOG");
  if (!path) return;
  FILE *f = fopen(path, "a");
  if (!f) return;
  fprintf(f, "%u %u %u.%u.%u %u %.*s\n", nr, io->data_size, io->version[0], io->version[1], io->version[2], io->flags,
          DM_NAME_LEN, io->name);
  fclose(f);
}

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

static int list_devices(struct dm_ioctl *io) {
  int n = getenv("FAKE_DM_DEVICES") ? atoi(getenv("FAKE_DM_DEVICES")) : 0;
  size_t room = io->data_size - io->data_start, needed = 0;
  char name[128];
  for (int i = 0; i < n; i++) {
    snprintf(name, sizeof(name), "dev%05d-%091d", i, 0);
    needed += align8(offsetof(struct dm_name_list, name) + strlen(name) + 1) + 8;
  }
  char *out = (char *)io + io->data_start;
  if (n == 0) {
    if (room < sizeof(struct dm_name_list)) { io->flags |= DM_BUFFER_FULL_FLAG; return 0; }
    ((struct dm_name_list *)out)->dev = 0;
    io->data_size = io->data_start + sizeof(struct dm_name_list);
    return 0;
  }
  if (room < needed) { io->flags |= DM_BUFFER_FULL_FLAG; return 0; }
  char *p = out;
  struct dm_name_list *prev = NULL;
  for (int i = 0; i < n; i++) {
    struct dm_name_list *nl = (struct dm_name_list *)p;
    if (prev) prev->next = (uint32_t)((char *)nl - (char *)prev);
    snprintf(name, sizeof(name), "dev%05d-%091d", i, 0);
    nl->dev = makedev(253, (unsigned)i);
    nl->next = 0;
    strcpy(nl->name, name);
    uint32_t *ev = (uint32_t *)((char *)io + align8((size_t)(nl->name + strlen(name) + 1 - (char *)io)));
    ev[0] = (uint32_t)i;
    ev[1] = 0;
    prev = nl;
    p = (char *)(ev + 2);
  }
  io->data_size = (uint32_t)(p - (char *)io);
  return 0;
}

static int target_msg(struct dm_ioctl *io) {
  struct dm_target_msg *m = (struct dm_target_msg *)((char *)io + io->data_start);
  char *out = (char *)io + io->data_start;
  size_t room = io->data_size - io->data_start;
  if (!strcmp(m->message, "fail-eexist")) { errno = EEXIST; return -1; }
  if (!strcmp(m->message, "quiet")) return 0;
  if (!strncmp(m->message, "echo ", 5)) {
    char text[256];
    snprintf(text, sizeof(text), "%s", m->message + 5);
    strcpy(out, text);
    io->flags |= DM_DATA_OUT_FLAG;
    io->data_size = io->data_start + strlen(text) + 1;
    return 0;
  }
  if (!strcmp(m->message, "big-output")) {
    const size_t len = 40000;
    io->flags |= DM_DATA_OUT_FLAG;
    if (room < len + 1) {
      memset(out, 'Z', room); /* the kernel writes its output over the input */
      io->flags |= DM_BUFFER_FULL_FLAG;
      return 0;
    }
    memset(out, 'x', len);
    out[len] = 0;
    io->data_size = io->data_start + len + 1;
    return 0;
  }
  errno = EINVAL; /* includes a scribbled-over message that was not resent */
  return -1;
}

int ioctl(int fd, unsigned long request, ...) {
  va_list ap;
  va_start(ap, request);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  if (_IOC_TYPE(request) != DM_IOCTL) {
    static int (*real_ioctl)(int, unsigned long, ...);
    if (!real_ioctl) real_ioctl = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
    return real_ioctl(fd, request, arg);
  }
  struct dm_ioctl *io = (struct dm_ioctl *)arg;
  unsigned nr = _IOC_NR(request);
  log_call(nr, io);
  if (io->version[0] != 4 || io->version[1] > 47) { errno = EINVAL; return -1; }
  io->version[1] = 47;
  io->version[2] = 0;
  if (!strcmp(io->name, "eintr") && !eintr_done) { eintr_done = 1; errno = EINTR; return -1; }
  switch (nr) {
    case DM_VERSION_CMD:
      io->data_size = offsetof(struct dm_ioctl, data);
      return 0;
    case DM_LIST_DEVICES_CMD:
      return list_devices(io);
    case DM_TARGET_MSG_CMD:
      return target_msg(io);
    case DM_TABLE_STATUS_CMD:
      if (!strcmp(io->name, "never-fits")) { io->flags |= DM_BUFFER_FULL_FLAG; return 0; }
      errno = ENXIO;
      return -1;
    default:
      errno = ENOTTY;
      return -1;
  }
}
