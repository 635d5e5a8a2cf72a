# xenconsole guest kernel (Intel syntax, assembled by GNU as, emu/asm.py, once per process).
#
# An HVM guest kernel: it runs at (virtual) CPL 0 with paging on (the hypervisor shadows this
# guest's own identity-mapped tables). Every vCPU enters at the first byte (VA 0x1000) with
# rdi = vCPU id and rsi = start-info VA (0); it takes the stack page 0x10 + id. Parameters
# come from the start-info page (offsets in emu/workload.py). Output goes to I/O port 0xe9,
# a byte per `out` (Xen's HVM debug port).
#
# Xen's HVM ABI: every vCPU finds Xen through CPUID leaf 0x40000000 ("XenVMMXenVMM"), reads
# the hypercall-page MSR from leaf 0x40000002 and writes it with the page's address; Xen
# fills the page with `mov eax, nr; vmcall; ret` stubs, 32 bytes each. A hypercall is
# `call HYPERCALL_PAGE + 32 * nr` with arguments in rdi, rsi, rdx, r10, r8.
#
# Workloads: the start-info `kind` indexes `workloads` below. A new workload is one more
# entry there (its number is KIND_NAMES in emu/workload.py) and a label that runs on every
# vCPU with r15 = vCPU id, r14 = start-info base, interrupts on; it never returns (end in
# `idle`). vCPU 0 of every workload but `asm` runs the balloon driver first.
#
# Balloon driver (vCPU 0): maps shared_info, registers the event-channel upcall vector,
# talks to dom0's xenstored over the ring of HVM_PARAM_STORE_PFN / _EVTCHN, watches
# `memory/target` and, on each change, gives pages back with XENMEM_decrease_reservation or
# takes them again with XENMEM_populate_physmap (highest gfns first, never below
# START_BALLOON_FLOOR: the workload's pages).

.set HYPERCALL_PAGE, 0xf000
.set HC_memory_op, HYPERCALL_PAGE + 12 * 32
.set HC_console_io, HYPERCALL_PAGE + 18 * 32
.set HC_event_channel_op, HYPERCALL_PAGE + 32 * 32
.set HC_hvm_op, HYPERCALL_PAGE + 34 * 32
.set SHINFO, 0xe000                 # gfn 0x0e: the hole shared_info is mapped at
.set EXTENTS, 0xd000                # gfn 0x0d: the balloon's extent list
.set UPCALL_VECTOR, 0xf3            # Linux's HYPERVISOR_CALLBACK_VECTOR
.set DOMID_SELF, 0x7ff0
.set XS_READ, 2
.set XS_WATCH, 4
.set XS_WATCH_EVENT, 15

kstart:
    lea rsp, [rdi + 0x11]
    shl rsp, 12                     # top of stack page 0x10 + id
    mov r15, rdi                    # vCPU id
    mov r14, rsi                    # start-info base
    call xen_init
    mov rax, qword ptr [r14 + 0x20] # workload kind
    cmp rax, 4
    je user                         # an asm program has no balloon driver
    test r15, r15
    jnz 1f
    call balloon_init
1:  sti
    mov rax, qword ptr [r14 + 0x20]
    cmp rax, (workloads_end - workloads) / 8
    jae idle
    lea rdx, [rip + workloads]
    jmp qword ptr [rdx + rax * 8]

workloads:
    .quad idle, touch, random, stream, user, phases
workloads_end:

# ---- Xen: CPUID signature, hypercall page ---------------------------------------------------
xen_init:
    mov eax, 0x40000000
    cpuid
    cmp ebx, 0x566e6558             # "XenV"
    jne no_xen
    cmp ecx, 0x65584d4d             # "MMXe"
    jne no_xen
    cmp edx, 0x4d4d566e             # "nVMM"
    jne no_xen
    mov eax, 0x40000002
    cpuid                           # eax: pages, ebx: the MSR
    mov ecx, ebx
    mov eax, HYPERCALL_PAGE
    xor edx, edx
    wrmsr
    ret
no_xen:
    lea rdi, [rip + msg_noxen]
    call puts
    cli
    hlt

idle:
    sti
idle_loop:
    hlt
    jmp idle_loop

# ---- touch: N pages, every S-th from start, read or write, once --------------------------
touch:
    test r15, r15
    jnz idle
    mov rcx, qword ptr [r14 + 0x28] # pages
    mov rbx, qword ptr [r14 + 0x30] # stride (pages)
    mov r9, qword ptr [r14 + 0x38]  # write?
    mov rsi, qword ptr [r14 + 0x40] # start gfn
    shl rsi, 12
    shl rbx, 12
    mov r8, rcx
touch_loop:
    test rcx, rcx
    jz touch_done
    test r9, r9
    jnz touch_write
    mov al, byte ptr [rsi]
    jmp touch_next
touch_write:
    mov byte ptr [rsi], cl
touch_next:
    add rsi, rbx
    dec rcx
    jmp touch_loop
touch_done:
    lea rdi, [rip + msg_touch]
    call puts
    mov rax, r8
    call putdec
    mov al, 10
    call putc
    jmp idle

# ---- random: forever, xorshift64 over the first ws arena pages ----------------------------
random:
    mov rbx, qword ptr [r14 + 0x28] # ws
    mov r12, qword ptr [r14 + 0x30] # seed
    add r12, r15
    movabs rax, 0x9E3779B97F4A7C15
    xor r12, rax
    jnz random_seeded
    mov r12, rax
random_seeded:
    mov r9, qword ptr [r14 + 0x38]  # write?
    mov r13, qword ptr [r14 + 0x10] # arena start gfn
random_loop:
    mov rax, r12
    shl rax, 13
    xor r12, rax
    mov rax, r12
    shr rax, 7
    xor r12, rax
    mov rax, r12
    shl rax, 17
    xor r12, rax
    mov rax, r12
    shr rax, 16
    xor edx, edx
    div rbx
    add rdx, r13
    shl rdx, 12
    mov rax, r12
    and eax, 0xff8
    add rdx, rax
    test r9, r9
    jnz random_write
    mov rax, qword ptr [rdx]
    jmp random_loop
random_write:
    mov qword ptr [rdx], r12
    jmp random_loop

# ---- stream: forever, one write per page through N arena pages in order -------------------
stream:
    test r15, r15
    jnz idle
    mov rbx, qword ptr [r14 + 0x28] # pages
    mov r13, qword ptr [r14 + 0x10] # arena start gfn
    shl r13, 12
stream_pass:
    xor ecx, ecx
    mov rdx, r13
stream_loop:
    cmp rcx, rbx
    jae stream_pass
    mov qword ptr [rdx], rcx
    add rdx, 0x1000
    inc rcx
    jmp stream_loop

# ---- phases: per window (key Z writes its number at start+0x78) read one range once --------
# Windows 0..k-1 range a, k..2k-1 range b, 2k..3k-1 a again, then halt (emu/workload.py).
phases:
    test r15, r15
    jnz idle
    mov r13, -1                     # the window last served
phases_wait:
    mov rax, qword ptr [r14 + 0x78] # window number
    cmp rax, r13
    je phases_wait
    mov r13, rax
    xor edx, edx
    div qword ptr [r14 + 0x40]      # phase = window / k
    cmp rax, 3
    jae idle
    mov rsi, qword ptr [r14 + 0x28] # a
    cmp rax, 1
    jne phases_go
    mov rsi, qword ptr [r14 + 0x30] # b
phases_go:
    shl rsi, 12
    mov rcx, qword ptr [r14 + 0x38] # pages
phases_read:
    mov al, byte ptr [rsi]
    add rsi, 0x1000
    dec rcx
    jnz phases_read
    lea rdi, [rip + msg_phases]
    call puts
    mov rax, r13
    call putdec
    mov al, 10
    call putc
    jmp phases_wait

# ---- asm: the user program at USER_ENTRY (0x20000), rdi = vCPU id, rsi = start info -------
user:
    mov rdi, r15
    mov rsi, r14
    xor ebx, ebx                    # the other registers as a vCPU starts: zero
    xor ecx, ecx
    xor edx, edx
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    mov eax, 0x20000
    push rax
    xor eax, eax
    ret                             # to 0x20000, rax zero too

# ---- the balloon driver: set-up (vCPU 0, interrupts off) ------------------------------------
balloon_init:
    # shared_info at SHINFO (XENMEM_add_to_physmap, XENMAPSPACE_shared_info)
    mov edi, 7
    lea rsi, [rip + xatp]
    call HC_memory_op
    test rax, rax
    jnz balloon_off
    # the XenStore ring and port (HVMOP_get_param)
    mov dword ptr [rip + hvm_param + 4], 1          # HVM_PARAM_STORE_PFN
    mov edi, 1
    lea rsi, [rip + hvm_param]
    call HC_hvm_op
    test rax, rax
    jnz balloon_off
    mov rax, qword ptr [rip + hvm_param + 8]
    shl rax, 12
    mov qword ptr [rip + xs_ring], rax
    mov dword ptr [rip + hvm_param + 4], 2          # HVM_PARAM_STORE_EVTCHN
    mov edi, 1
    lea rsi, [rip + hvm_param]
    call HC_hvm_op
    test rax, rax
    jnz balloon_off
    mov rax, qword ptr [rip + hvm_param + 8]
    mov dword ptr [rip + xs_port], eax
    # the gfns it may give back: [floor, top)
    mov rax, qword ptr [r14 + 0x70]
    mov qword ptr [rip + b_floor], rax
    mov rax, qword ptr [r14 + 0x18]
    mov qword ptr [rip + b_top], rax
    # IDT entry for the upcall vector (interrupt gate), then HVMOP_set_evtchn_upcall_vector
    lea rax, [rip + upcall_entry]
    lea rdi, [rip + idt + UPCALL_VECTOR * 16]
    mov rdx, rax
    shr rdx, 16
    and edx, 0xffff
    shl rdx, 48
    movzx ecx, ax
    or rdx, rcx
    movabs rcx, 0x00008E0000080000
    or rdx, rcx
    mov qword ptr [rdi], rdx
    shr rax, 32
    mov qword ptr [rdi + 8], rax
    lidt [rip + idtr]
    mov edi, 23
    lea rsi, [rip + upcall_vec]
    call HC_hvm_op
    test rax, rax
    jnz balloon_off
    # watch memory/target; the first event arrives at once
    mov edi, XS_WATCH
    lea rsi, [rip + s_watch]
    mov edx, s_watch_end - s_watch
    call xs_send
    ret
balloon_off:
    lea rdi, [rip + msg_noballoon]
    call puts
    ret

# ---- the event-channel upcall (interrupt gate: entered with interrupts off) ----------------
upcall_entry:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
upcall_again:
    mov rbx, SHINFO
    mov byte ptr [rbx], 0           # vcpu_info[0].evtchn_upcall_pending
    xor eax, eax
    xchg qword ptr [rbx + 8], rax   # evtchn_pending_sel
    xor eax, eax
    xchg qword ptr [rbx + 2048], rax # evtchn_pending[0]: ports 0-63, taken
    mov ecx, dword ptr [rip + xs_port]
    bt rax, rcx
    jnc 1f
    call xs_receive
1:  cmp byte ptr [rbx], 0
    jne upcall_again
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    sti                             # the interrupted code had interrupts on
    iretq

# ---- XenStore ring (public/io/xs_wire.h: req[1024] rsp[1024], then the four indexes) --------
xs_send:                            # edi type, rsi payload, edx length (at most 240)
    mov r8, qword ptr [rip + xs_ring]
    mov dword ptr [rip + xs_hdr], edi
    mov dword ptr [rip + xs_hdr + 12], edx
    mov r9d, dword ptr [r8 + 2052]  # req_prod
    mov eax, r9d
    sub eax, dword ptr [r8 + 2048]  # - req_cons
    lea ecx, [edx + 16]
    add eax, ecx
    cmp eax, 1024
    ja xs_send_full
    push rsi
    push rdx
    lea rsi, [rip + xs_hdr]
    mov ecx, 16
    call xs_put
    pop rcx
    pop rsi
    call xs_put
    mov dword ptr [r8 + 2052], r9d  # req_prod
    mov edi, 4                      # EVTCHNOP_send
    lea rsi, [rip + xs_port]
    call HC_event_channel_op
xs_send_full:
    ret
xs_put:                             # rsi -> ecx bytes into req[], r9d = producer index
    test ecx, ecx
    jz 2f
1:  mov eax, r9d
    and eax, 1023
    mov dl, byte ptr [rsi]
    mov byte ptr [r8 + rax], dl
    inc rsi
    inc r9d
    dec ecx
    jnz 1b
2:  ret

xs_receive:                         # every complete reply in rsp[]
    mov r8, qword ptr [rip + xs_ring]
xs_next:
    mov r9d, dword ptr [r8 + 2056]  # rsp_cons
    mov eax, dword ptr [r8 + 2060]  # rsp_prod
    sub eax, r9d
    cmp eax, 16
    jb xs_done
    lea rdi, [rip + xs_hdr]
    mov ecx, 16
    call xs_get
    mov ecx, dword ptr [rip + xs_hdr + 12]
    cmp ecx, 4096
    ja xs_done
    mov eax, dword ptr [r8 + 2060]
    sub eax, dword ptr [r8 + 2056]
    lea edx, [ecx + 16]
    cmp eax, edx
    jb xs_done
    lea rdi, [rip + xs_body]
    call xs_get
    mov dword ptr [r8 + 2056], r9d  # rsp_cons: the reply is ours
    mov eax, dword ptr [rip + xs_hdr]
    cmp eax, XS_WATCH_EVENT
    je xs_watch_fired
    cmp eax, XS_READ
    jne xs_next
    call balloon_target             # the value of memory/target, in KiB
    jmp xs_next
xs_watch_fired:
    mov edi, XS_READ
    lea rsi, [rip + s_target]
    mov edx, s_target_end - s_target
    call xs_send
    mov r8, qword ptr [rip + xs_ring]
    jmp xs_next
xs_done:
    ret
xs_get:                             # ecx bytes of rsp[] from index r9d into rdi
    test ecx, ecx
    jz 2f
1:  mov eax, r9d
    and eax, 1023
    mov dl, byte ptr [r8 + rax + 1024]
    mov byte ptr [rdi], dl
    inc rdi
    inc r9d
    dec ecx
    jnz 1b
2:  ret

# ---- the balloon: reach the target ------------------------------------------------------
balloon_target:                     # xs_body, xs_hdr+12 bytes: decimal KiB
    push r8
    push r9
    xor eax, eax
    xor ecx, ecx
    lea rsi, [rip + xs_body]
    mov edx, dword ptr [rip + xs_hdr + 12]
1:  test edx, edx
    jz 2f
    mov cl, byte ptr [rsi]
    sub cl, 0x30
    cmp cl, 9
    ja 2f
    imul rax, rax, 10
    add rax, rcx
    inc rsi
    dec edx
    jmp 1b
2:  shr rax, 2                      # pages
    mov r12, rax                    # the target
    mov edi, 3                      # XENMEM_current_reservation
    lea rsi, [rip + res_domid]
    call HC_memory_op
    mov r13, rax                    # pages now
balloon_loop:
    cmp r13, r12
    je balloon_done
    ja balloon_down
    # up: take back the lowest of the ballooned gfns, up to 512 at a time
    mov rcx, r12
    sub rcx, r13
    mov rax, qword ptr [rip + b_count]
    cmp rcx, rax
    cmovae rcx, rax
    cmp rcx, 512
    jbe 3f
    mov ecx, 512
3:  test rcx, rcx
    jz balloon_done
    mov rdx, qword ptr [rip + b_top]
    sub rdx, rax                    # the lowest ballooned gfn
    mov edi, 6                      # XENMEM_populate_physmap
    jmp balloon_call
balloon_down:
    mov rcx, r13
    sub rcx, r12
    cmp rcx, 512
    jbe 4f
    mov ecx, 512
4:  mov rdx, qword ptr [rip + b_top]
    sub rdx, qword ptr [rip + b_count]
    sub rdx, qword ptr [rip + b_floor]  # gfns left above the floor
    cmp rcx, rdx
    cmova rcx, rdx
    test rcx, rcx
    jz balloon_done
    mov rdx, qword ptr [rip + b_top]
    sub rdx, qword ptr [rip + b_count]
    sub rdx, rcx                    # the lowest gfn of this batch
    mov edi, 1                      # XENMEM_decrease_reservation
balloon_call:                       # edi op, rdx first gfn, rcx count
    mov qword ptr [rip + reservation + 8], rcx
    mov rsi, EXTENTS
    mov rax, rdx
    mov r9, rcx
6:  mov qword ptr [rsi], rax
    add rsi, 8
    inc rax
    dec r9
    jnz 6b
    mov ebx, edi
    lea rsi, [rip + reservation]
    call HC_memory_op
    test rax, rax
    jle balloon_done                # nothing done (or an error): stop here
    cmp ebx, 1
    jne 7f
    add qword ptr [rip + b_count], rax
    sub r13, rax
    jmp balloon_loop
7:  sub qword ptr [rip + b_count], rax
    add r13, rax
    jmp balloon_loop
balloon_done:
    mov rbx, SHINFO                 # the upcall loop's base, kept
    pop r9
    pop r8
    ret

# ---- port 0xe9 output ---------------------------------------------------------------------
putc:                               # al
    push rdx
    mov dx, 0xe9
    out dx, al
    pop rdx
    ret
puts:                               # rdi -> NUL-terminated string
    push rax
puts_loop:
    mov al, byte ptr [rdi]
    test al, al
    jz puts_end
    call putc
    inc rdi
    jmp puts_loop
puts_end:
    pop rax
    ret
putdec:                             # rax, unsigned decimal
    push rbx
    push rcx
    push rdx
    mov rbx, 10
    xor ecx, ecx
putdec_div:
    xor edx, edx
    div rbx
    push rdx
    inc rcx
    test rax, rax
    jnz putdec_div
putdec_out:
    pop rax
    add al, 0x30
    call putc
    dec rcx
    jnz putdec_out
    pop rdx
    pop rcx
    pop rbx
    ret
msg_touch:
    .asciz "touch done "
msg_phases:
    .asciz "phases window "
msg_noxen:
    .asciz "no Xen signature in CPUID leaf 0x40000000\n"
msg_noballoon:
    .asciz "balloon: no XenStore, driver off\n"
s_watch:
    .ascii "memory/target\0balloon\0"
s_watch_end:
s_target:
    .ascii "memory/target\0"
s_target_end:

.data
.balign 8
xatp:                               # struct xen_add_to_physmap
    .short DOMID_SELF, 0
    .long 0                         # XENMAPSPACE_shared_info
    .quad 0, SHINFO >> 12           # idx, gpfn
hvm_param:                          # struct xen_hvm_param
    .short DOMID_SELF, 0
    .long 0
    .quad 0
upcall_vec:                         # struct xen_hvm_evtchn_upcall_vector
    .long 0
    .byte UPCALL_VECTOR, 0, 0, 0
res_domid:
    .short DOMID_SELF, 0, 0, 0
reservation:                        # struct xen_memory_reservation
    .quad EXTENTS, 0
    .long 0, 0
    .short DOMID_SELF, 0, 0, 0
idtr:
    .short 256 * 16 - 1
    .quad idt
xs_port: .long 0, 0
xs_ring: .quad 0
b_floor: .quad 0
b_top: .quad 0
b_count: .quad 0                    # gfns given back, the highest ones below b_top
xs_hdr: .long 0, 0, 0, 0

.bss
.balign 4096
idt: .space 4096
xs_body: .space 4104
