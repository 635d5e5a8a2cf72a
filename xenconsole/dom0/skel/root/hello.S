# Prints one line per vCPU on its console, then goes offline; the domain powers off when
# every vCPU is offline.  xl create hello.cfg
# (or: xl create /etc/xen/asm.cfg 'name="hello"' 'workload="asm:hello.S"')
    lea rsi, [rip + msg]
    add dil, '0'
    mov byte ptr [rip + msg + 15], dil
1:  lodsb
    test al, al
    jz 2f
    out 0xe9, al
    jmp 1b
2:  cli
    hlt

.data
msg: .asciz "hello from cpu ?\n"
