# Prints one line per vCPU on its console, then goes offline; the domain powers off when
# every vCPU is offline.  xl create hello.cfg
# (or: xl create /etc/xen/asm.cfg 'name="hello"' 'workload="asm:hello.S"')
# The line goes out through Xen's console_io hypercall: `call 0xf000 + 32 * 18` is that
# hypercall's stub in the hypercall page the guest kernel had Xen write (mov eax, 18; vmcall).
    add dil, '0'
    mov byte ptr [rip + msg + 15], dil
    xor edi, edi                    # CONSOLEIO_write
    mov esi, msg_end - msg          # count
    lea rdx, [rip + msg]            # buffer
    call 0xf000 + 32 * 18           # HYPERVISOR_console_io
    cli
    hlt

.data
msg: .ascii "hello from cpu ?\n"
msg_end:
