# xenconsole guest kernel (Intel syntax, assembled by GNU as, emu/asm.py, once per process).
#
# Runs at CPL 3 with paging on (the hypervisor shadows this guest's own identity-mapped
# tables). Every vCPU enters at the first byte (VA 0x1000) with rdi = vCPU id and
# rsi = start-info VA (0); it takes the stack page 0x10 + id. Parameters come from the
# start-info page (offsets in emu/workload.py). Output goes to I/O port 0xe9, a byte per `out`.

kstart:
    lea rsp, [rdi + 0x11]
    shl rsp, 12                     # top of stack page 0x10 + id
    mov r15, rdi                    # vCPU id
    mov r14, rsi                    # start-info base
    mov rax, qword ptr [r14 + 0x20] # workload kind
    cmp rax, 1
    je touch
    cmp rax, 2
    je random
    cmp rax, 3
    je stream
    cmp rax, 4
    je user
    cmp rax, 5
    je phases
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

# ---- phases: per window (key Z writes its number at start+0x68) read one range once --------
# Windows 0..k-1 range a, k..2k-1 range b, 2k..3k-1 a again, then halt (emu/workload.py).
phases:
    test r15, r15
    jnz idle
    mov r13, -1                     # the window last served
phases_wait:
    mov rax, qword ptr [r14 + 0x68] # window number
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
    mov rax, 0x20000
    jmp rax

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
