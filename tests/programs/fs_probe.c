/* File-system probes for tests/core/test_wasi_fs.py, on the preopened directory at fd 3.
 *
 * No argument: tries to reach outside the directory (holding inside.txt, sub/ and link_out, a symlink the
 * host points outside) every way preview1 allows, one line per attempt: "name errno" (0: it worked).
 * race N: opens "swap" (a symlink the host keeps swapping between inside.txt and a path outside) N times and
 * prints how many reads saw each content. exhaust: opens inside.txt until the host refuses, prints how many
 * and the errno, closes them and opens once more. write PATH: creates PATH and writes to it. ls: the
 * directory's entries (name, inode, type, size, mtime) in the order fd_readdir gives them. fopen PATH: libc's
 * fopen + read, printing the contents or the error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wasi/api.h>

#define PRE 3
#define ALL_RIGHTS ((__wasi_rights_t) ~0ull)

static __wasi_errno_t open_at(__wasi_fd_t dir, const char *path, __wasi_lookupflags_t follow, __wasi_oflags_t oflags,
                              __wasi_fd_t *fd)
{
    return __wasi_path_open(dir, follow, path, oflags, ALL_RIGHTS, ALL_RIGHTS, 0, fd);
}

/* Open and read the first bytes of path; errno, or 0 with the bytes in buf. */
static __wasi_errno_t read_path(const char *path, __wasi_lookupflags_t follow, char *buf, size_t len)
{
    __wasi_fd_t fd;
    __wasi_errno_t e = open_at(PRE, path, follow, 0, &fd);
    if (e)
        return e;
    __wasi_iovec_t iov = {(uint8_t *) buf, len - 1};
    __wasi_size_t n = 0;
    e = __wasi_fd_read(fd, &iov, 1, &n);
    buf[e ? 0 : n] = 0;
    (void) __wasi_fd_close(fd);
    return e;
}

static void attempt(const char *name, __wasi_errno_t e)
{
    printf("%s %d\n", name, (int) e);
}

static void try_read(const char *name, const char *path, __wasi_lookupflags_t follow)
{
    char buf[64];
    __wasi_errno_t e = read_path(path, follow, buf, sizeof buf);
    if (e == 0 && strstr(buf, "SECRET"))
        printf("LEAKED %s\n", name);
    attempt(name, e);
}

static int race(int rounds)
{
    int inside = 0, secret = 0, failed = 0;
    for (int i = 0; i < rounds; i++) {
        char buf[64];
        if (read_path("swap", __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW, buf, sizeof buf) != 0)
            failed++;
        else if (strstr(buf, "SECRET"))
            secret++;
        else
            inside++;
    }
    printf("inside %d secret %d failed %d\n", inside, secret, failed);
    return 0;
}

static int exhaust(void)
{
    static __wasi_fd_t fds[4096];
    int n = 0;
    __wasi_errno_t e = 0;
    while (n < 4096 && (e = open_at(PRE, "inside.txt", 0, 0, &fds[n])) == 0)
        n++;
    printf("opened %d errno %d\n", n, (int) e);
    for (int i = 0; i < n; i++)
        (void) __wasi_fd_close(fds[i]);
    char buf[64];
    attempt("reopen", read_path("inside.txt", 0, buf, sizeof buf));
    return 0;
}

static int write_file(const char *path)
{
    __wasi_fd_t fd;
    __wasi_errno_t e = open_at(PRE, path, 0, __WASI_OFLAGS_CREAT, &fd);
    attempt("create", e);
    if (e == 0) {
        __wasi_ciovec_t iov = {(const uint8_t *) "written\n", 8};
        __wasi_size_t n;
        attempt("write", __wasi_fd_write(fd, &iov, 1, &n));
    }
    attempt("truncate_existing", open_at(PRE, "inside.txt", 0, __WASI_OFLAGS_TRUNC, &fd));
    attempt("mkdir", __wasi_path_create_directory(PRE, "newdir"));
    attempt("unlink", __wasi_path_unlink_file(PRE, "inside.txt"));
    return 0;
}

static int list(void)
{
    static uint8_t buf[1 << 16];
    __wasi_size_t used;
    if (__wasi_fd_readdir(PRE, buf, sizeof buf, 0, &used) != 0)
        return 1;
    for (size_t off = 0; off + sizeof(__wasi_dirent_t) <= used;) {
        __wasi_dirent_t d;
        memcpy(&d, buf + off, sizeof d);
        char name[256];
        size_t n = d.d_namlen < 255 ? d.d_namlen : 255;
        memcpy(name, buf + off + sizeof d, n);
        name[n] = 0;
        off += sizeof d + d.d_namlen;
        __wasi_filestat_t st;
        memset(&st, 0, sizeof st);
        if (strcmp(name, "..") != 0)
            (void) __wasi_path_filestat_get(PRE, 0, name, &st);
        printf("%s ino=%llu type=%d size=%llu mtim=%llu\n", name, (unsigned long long) d.d_ino, (int) d.d_type,
               (unsigned long long) st.size, (unsigned long long) st.mtim);
    }
    return 0;
}

static int cat(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return 1;
    }
    char buf[256];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stdout);
    fclose(f);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 2 && strcmp(argv[1], "write") == 0)
        return write_file(argv[2]);
    if (argc > 1 && strcmp(argv[1], "ls") == 0)
        return list();
    if (argc > 2 && strcmp(argv[1], "fopen") == 0)
        return cat(argv[2]);
    if (argc > 2 && strcmp(argv[1], "race") == 0)
        return race(atoi(argv[2]));
    if (argc > 1 && strcmp(argv[1], "exhaust") == 0)
        return exhaust();

    try_read("inside", "inside.txt", 0);
    try_read("dotdot", "../secret.txt", 0);
    try_read("sub_dotdot", "sub/../../secret.txt", 0);
    try_read("absolute", "/secret.txt", 0);
    try_read("etc_passwd", "/etc/passwd", __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW);
    try_read("host_symlink", "link_out", __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW);
    try_read("host_symlink_in_dir", "link_out/../secret.txt", __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW);
    try_read("proc_self", "/proc/self/root/etc/passwd", __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW);

    /* symlinks the guest makes itself */
    attempt("make_rel_link", __wasi_path_symlink("../secret.txt", PRE, "mylink"));
    try_read("own_symlink", "mylink", __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW);
    attempt("make_abs_link", __wasi_path_symlink("/secret.txt", PRE, "abslink"));

    /* hard links, renames, directories and removal across the boundary */
    attempt("hardlink_out", __wasi_path_link(PRE, 0, "../secret.txt", PRE, "hard"));
    attempt("hardlink_via_symlink", __wasi_path_link(PRE, 0, "link_out", PRE, "hard2"));
    try_read("hardlink_via_symlink_read", "hard2", __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW);
    attempt("rename_out", __wasi_path_rename(PRE, "inside.txt", PRE, "../moved.txt"));
    attempt("rename_in", __wasi_path_rename(PRE, "../secret.txt", PRE, "stolen.txt"));
    attempt("mkdir_out", __wasi_path_create_directory(PRE, "../newdir"));
    attempt("unlink_out", __wasi_path_unlink_file(PRE, "../secret.txt"));
    attempt("unlink_via_symlink_dir", __wasi_path_unlink_file(PRE, "link_out/secret.txt"));
    attempt("rmdir_dotdot", __wasi_path_remove_directory(PRE, ".."));
    __wasi_filestat_t st;
    attempt("stat_dotdot", __wasi_path_filestat_get(PRE, 0, "..", &st));
    attempt("utimes_dotdot", __wasi_path_filestat_set_times(PRE, 0, "..", 0, 0, __WASI_FSTFLAGS_MTIM));
    attempt("utimes_secret", __wasi_path_filestat_set_times(PRE, __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW, "link_out", 0, 0,
                                                            __WASI_FSTFLAGS_MTIM));
    char target[64];
    __wasi_size_t used;
    attempt("readlink_host_symlink", __wasi_path_readlink(PRE, "link_out", (uint8_t *) target, sizeof target, &used));
    attempt("create_out", open_at(PRE, "../created.txt", 0, __WASI_OFLAGS_CREAT, &(__wasi_fd_t){0}));

    /* fd_renumber over the preopen: the directory is gone, nothing else appears in its place */
    __wasi_fd_t file;
    attempt("open_for_renumber", open_at(PRE, "inside.txt", 0, 0, &file));
    attempt("renumber_over_preopen", __wasi_fd_renumber(file, PRE));
    __wasi_prestat_t pre;
    attempt("prestat_after_renumber", __wasi_fd_prestat_get(PRE, &pre));
    try_read("open_after_renumber", "inside.txt", 0);
    attempt("renumber_to_closed", __wasi_fd_renumber(PRE, 40));
    attempt("close_twice", __wasi_fd_close(file) == 0 ? __wasi_fd_close(file) : 1);
    return 0;
}
