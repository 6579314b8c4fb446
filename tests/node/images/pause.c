/* The pod sandbox's PID 1 for the test node (no registry, so no registry.k8s.io/pause):
 * sleeps until SIGTERM/SIGINT, reaping any child that exits meanwhile. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
